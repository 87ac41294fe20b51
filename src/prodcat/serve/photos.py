"""Photos sent with a request (base64 in the JSON, or a multipart upload): checked to be an image of at most
`max_pixels` pixels before a single pixel is decoded (no decompression bombs), decoded once to prove it is
whole, then handed to the models as a temporary file (their `image_path`) that is removed after the
request."""
from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from pathlib import Path

from prodcat.data.photos import inspect_photo
from prodcat.errors import DataError


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
    decodes whole (prodcat.data.photos, the one reader); otherwise a DataError saying which it is not."""
    im, suffix, problem = inspect_photo(data, max_pixels)
    if im is not None:
        im.close()
    if problem is not None:
        raise photo_error(problem + (" (serve.max_photo_pixels)" if "pixels" in problem else ""), row)
    return suffix


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
