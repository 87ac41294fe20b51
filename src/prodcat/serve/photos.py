"""Photos sent with a request (base64 in the JSON, or a multipart upload): checked to be an image of at most
`max_pixels` pixels before a single pixel is decoded (no decompression bombs), decoded once to prove it is
whole, then handed to the models as a temporary file (their `image_path`) that is removed after the
request."""
from __future__ import annotations

import base64
import binascii
import io
import shutil
import tempfile
from pathlib import Path

from prodcat.errors import DataError

SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}  # what the models read


def photo_error(problem: str, row: int | None) -> DataError:
    """A bad photo, named like any other bad field of a product."""
    return DataError(f"photo: {problem}", column="photo", problem=problem, rows=None if row is None else [row])


def from_base64(text: str, row: int | None = None) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise photo_error("not base64", row) from None


def checked_suffix(data: bytes, max_pixels: int, row: int | None = None) -> str:
    """The file suffix of a photo that is an image the models read, of at most `max_pixels` pixels, and
    decodes whole; otherwise a DataError saying which of these it is not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
            if width * height > max_pixels:
                raise photo_error(f"{width} x {height} pixels is over the limit of {max_pixels:,} "
                                  "(serve.max_photo_pixels)", row)
            if im.format not in SUFFIXES:
                raise photo_error(f"{im.format} images are not read (send {', '.join(SUFFIXES)})", row)
            im.load()  # the whole first frame: a truncated or damaged file fails here
            return SUFFIXES[im.format]
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise photo_error(f"over the limit of {max_pixels:,} pixels (serve.max_photo_pixels)", row) from None
    except UnidentifiedImageError:
        raise photo_error("not an image", row) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise photo_error("a damaged or truncated image", row) from None


class PhotoFiles:
    """A request's photos as temporary files, all removed when the `with` block ends."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels
        self.folder: Path | None = None

    def __enter__(self) -> "PhotoFiles":
        return self

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def add(self, data: bytes, row: int | None = None) -> str:
        """The path of a checked photo's temporary file (a DataError for a bad photo)."""
        suffix = checked_suffix(data, self.max_pixels, row)
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="prodcat-serve-photos-"))
        path = self.folder / f"{row if row is not None else 0}{suffix}"
        path.write_bytes(data)
        return str(path)
