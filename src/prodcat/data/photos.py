"""The one photo reader: a product's photo (a file of `images/`, or the bytes a request sent) is an image
of a format the models read and of at most `max_pixels` pixels - checked from its header before a single
pixel is decoded, so a decompression bomb or a 12000 x 12000 photo costs nothing - and decodes whole.
`predict`, training and the service all read photos through it, with one limit (`MAX_PIXELS`, the
declared default of serve.max_photo_pixels)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from prodcat.settings import ServeSettings, defaults_of

MAX_PIXELS = defaults_of(ServeSettings)["max_photo_pixels"]  # width x height of a photo at most
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}  # what the models read
FILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")  # a photo file's names: SUFFIXES' and .jpeg


def inspect_photo(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, decode: bool = True):
    """(the image opened - decoded when `decode` - or None, its file suffix or None, the problem or None):
    the problem says why a photo is not read (over the pixel limit, not an image, another format, damaged
    or truncated). The caller closes the image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the limit below is checked instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)  # the header only
    except Image.DecompressionBombError:
        return None, None, f"over the limit of {max_pixels:,} pixels"
    except UnidentifiedImageError:
        return None, None, "not an image"
    except OSError as exc:
        return None, None, f"cannot be read ({exc.strerror or exc})"
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        return None, None, f"{width} x {height} pixels is over the limit of {max_pixels:,}"
    if im.format not in SUFFIXES:
        im.close()
        return None, None, f"{im.format} images are not read ({', '.join(SUFFIXES)} are)"
    suffix = SUFFIXES[im.format]
    try:
        if decode:
            im.load()  # the whole first frame: a truncated or damaged file fails here
            return im, suffix, None
        im.verify()
        return None, suffix, None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None, None, "a damaged or truncated image"
    finally:
        if not decode:
            im.close()


def photo_problem(path, max_pixels: int = MAX_PIXELS) -> str | None:
    """Why the photo file at `path` is not read (None: it is), without decoding its pixels."""
    return inspect_photo(path, max_pixels, decode=False)[2]
