"""Decoding of image bytes into fixed-size RGB arrays, with one clear error class per failure.

What `decode_image` does, in order:

1. Reads only the header (Pillow's `Image.open` is lazy) and rejects data that is empty, not an
   image, in a format outside `SUPPORTED_FORMATS`, or whose declared width*height is over
   `max_pixels` (a decompression bomb), all before any pixel is decoded.
2. Decodes the first frame (an animated GIF or WebP gives its first frame). A JPEG much larger
   than the target is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (Pillow's draft mode), which
   is several times faster and never goes below the target size.
3. Applies the EXIF orientation, so the picture is the way up a viewer shows it.
4. Converts every mode to RGB: greyscale, 1-bit, palette, CMYK, and 16-bit greyscale (scaled to
   8 bits by keeping the high byte, as Pillow does for 16-bit RGB). **Transparent pixels are
   alpha-composited onto a white background**, so a transparent logo becomes a logo on white.
5. Stretches the whole image to the target size with bilinear filtering: no crop, aspect ratio
   not kept. This is the geometry of Keras' `image_dataset_from_directory` defaults
   (`interpolation="bilinear"`, `crop_to_aspect_ratio=False`), and the values equal
   `keras.utils.load_img(..., interpolation="bilinear")`, which calls the same Pillow resize.
   (`tf.image.resize` does not antialias, so its values differ slightly when shrinking.)

`decoder="opencv"` (opt-in, `--image-decoder opencv`, needs the `fast-decode` extra: OpenCV) keeps
steps 1, 3 and 4 and every error as above, and changes only how pixels are decoded and resized:
a baseline RGB or greyscale JPEG that ends with its end-of-image marker is decoded by OpenCV's
libjpeg-turbo (`cv2.imdecode`, at the same 1/2..1/8 DCT scale as step 2) and stretched to the
same target with `cv2.resize(INTER_LINEAR)`, which does not antialias; every other image (PNG,
GIF, BMP, WebP, CMYK JPEG) goes through Pillow exactly as above. About twice as fast as Pillow's path on 500x375 JPEGs;
pixels differ by ~1/255 on average, so the embeddings move slightly (cosine >= 0.99) and the
decoder is part of the model's identity (`ImageEmbedder.model_sha256`). Anything OpenCV cannot
decode (it returns None) or a JPEG without its end marker is handed to Pillow, so a corrupt or
truncated file gets exactly the error it gets with `decoder="pillow"`.

The result is deterministic (same bytes, bit-identical array) and the function is thread-safe:
it mutates no shared state per call. Importing this module switches off Pillow's own global
decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) for the whole process, because
`max_pixels` is checked here instead and must be free to go above Pillow's default.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Optional

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "SUPPORTED_FORMATS",
    "ImageDecodeError",
    "EmptyImageFile",
    "UnsupportedImageFormat",
    "CorruptImage",
    "ImageTooLarge",
    "DECODERS",
    "DecoderUnavailable",
    "decode_image",
    "require_decoder",
]

DEFAULT_MAX_IMAGE_PIXELS: int = 100_000_000
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
DECODERS = ("pillow", "opencv")

# Our limit (`max_pixels`) is the one that applies; Pillow's would pre-empt it above ~179 MP and
# warn above ~89 MP. Set once at import, never per call.
Image.MAX_IMAGE_PIXELS = None

# Pillow names a JPEG that carries a multi-picture index (most phone cameras) "MPO".
_JPEG_FORMATS = ("JPEG", "MPO")
_ACCEPTED_FORMATS = frozenset(SUPPORTED_FORMATS + ("MPO",))
_FORMATS_LIST = ", ".join(SUPPORTED_FORMATS)
_WHITE = (255, 255, 255)

_Box = tuple[float, float, float, float]  # left, upper, right, lower, as Image.resize takes it

# What Pillow raises from a header or a decoder that meets broken or missing data.
_PILLOW_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

# EXIF orientation -> the transposition that puts it upright (as ImageOps.exif_transpose does).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})

# Signatures used only to word errors: a supported format whose header Pillow cannot read is
# corrupt, and a known non-image format is named rather than called "random bytes".
_SUPPORTED_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
_OTHER_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "GZIP"),
    (b"8BPS", "PSD"),
)


class ImageDecodeError(ValueError):
    """An image's bytes cannot be turned into an array; the message is one line for users."""


class EmptyImageFile(ImageDecodeError):
    """The data has zero bytes."""


class UnsupportedImageFormat(ImageDecodeError):
    """The data is not an image, or is an image in a format outside `SUPPORTED_FORMATS`."""


class CorruptImage(ImageDecodeError):
    """The data looks like a supported image but is truncated or broken."""


class ImageTooLarge(ImageDecodeError):
    """The header declares more pixels than allowed (a possible decompression bomb)."""


class DecoderUnavailable(ImportError):
    """`decoder="opencv"` was asked for but OpenCV is not installed (a set-up error, not bad data)."""


_cv2 = None


def require_decoder(decoder: str):
    """Check that `decoder` is one of `DECODERS` and can run here; return the cv2 module for opencv.

    Raises ValueError for an unknown name and `DecoderUnavailable` when OpenCV is missing.
    OpenCV's own thread pool is set to one thread: the job decodes on its own pool of threads.
    """
    global _cv2
    if decoder not in DECODERS:
        raise ValueError(f"image decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder != "opencv":
        return None
    if _cv2 is None:
        try:
            import cv2
        except ImportError as exc:
            raise DecoderUnavailable(
                f"the opencv image decoder needs OpenCV: pip install 'beam-embeddings[fast-decode]' "
                f"(opencv-python-headless) ({exc})"
            ) from exc
        cv2.setNumThreads(1)
        _cv2 = cv2
    return _cv2


def decode_image(
    data: bytes, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, decoder: str = "pillow"
) -> np.ndarray:
    """Decode image bytes into a C-contiguous uint8 RGB array of shape `(height, width, 3)`.

    `decoder`: "pillow" (default) or "opencv" (faster, pixels ~1/255 apart; see the module doc).
    """
    height, width = _check_size(size)
    cv2 = require_decoder(decoder)
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    if not data:
        raise EmptyImageFile("empty file (0 bytes): there is no image to decode")

    with _open(data) as img:
        _check_format_and_size(img, max_pixels)
        is_jpeg = img.format in _JPEG_FORMATS
        orientation = 1
        box: Optional[_Box] = None
        try:
            if is_jpeg:
                orientation = _exif_orientation(img)  # a JPEG's EXIF is in its header
                if cv2 is not None and img.mode in ("RGB", "L") and _ends_with_eoi(data):
                    pixels = _opencv_jpeg(cv2, data, img, width, height, orientation)
                    if pixels is not None:
                        return pixels
                box = _draft_jpeg(img, width, height, orientation)
            img.load()
            if not is_jpeg:
                orientation = _exif_orientation(img)  # a PNG's EXIF may follow the pixels
        except Image.DecompressionBombError as exc:  # only if someone re-enabled Pillow's limit
            raise ImageTooLarge(_one_line(exc)) from exc
        except _PILLOW_DATA_ERRORS as exc:
            message = f"corrupt or truncated {img.format} image: {_one_line(exc)}"
            raise CorruptImage(message) from exc
        upright, box = _orient(img, orientation, box)
        return _resize_to_rgb_array(upright, box, width, height)


def _ends_with_eoi(data: bytes) -> bool:
    """Whether a JPEG ends with its end-of-image marker (padding aside): not visibly truncated.

    OpenCV's libjpeg fills a truncated picture with grey and only warns; such files go to Pillow,
    which reports them as corrupt. (An MPO's last picture also ends with the marker.)
    """
    return data[-64:].rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def _draft_scale(stored: tuple[int, int], target: tuple[int, int]) -> int:
    """The DCT scale (1, 2, 4, 8) Pillow's draft mode picks: the largest keeping >= the target."""
    scale = min(stored[0] // target[0], stored[1] // target[1])
    for candidate in (8, 4, 2):
        if scale >= candidate:
            return candidate
    return 1


# cv2.IMREAD_* flags: colour/greyscale at DCT scale 1, 2, 4, 8 (constants of OpenCV's API).
_CV_COLOR = {1: 1, 2: 17, 4: 33, 8: 65}
_CV_GREY = {1: 0, 2: 16, 4: 32, 8: 64}
_CV_IGNORE_ORIENTATION = 128


def _opencv_jpeg(cv2, data: bytes, img: Image.Image, width: int, height: int, orientation: int) -> Optional[np.ndarray]:
    """Decode and resize a JPEG with OpenCV; None when OpenCV cannot decode it (Pillow then decides)."""
    stored = (height, width) if orientation in _SWAPS_AXES else (width, height)
    scale = _draft_scale(img.size, stored)
    flags = (_CV_GREY if img.mode == "L" else _CV_COLOR)[scale] | _CV_IGNORE_ORIENTATION
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if decoded is None or decoded.size == 0:
        return None
    if decoded.shape[1] != stored[0] or decoded.shape[0] != stored[1]:
        decoded = cv2.resize(decoded, stored, interpolation=cv2.INTER_LINEAR)
    # OpenCV decodes to BGR (or one grey channel); its own conversion is ~30x faster than
    # copying a channel-reversed NumPy view (0.007 against 0.23 ms for 224x224).
    rgb = cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB if decoded.ndim == 2 else cv2.COLOR_BGR2RGB)
    return _orient_array(cv2, rgb, orientation)


def _orient_array(cv2, pixels: np.ndarray, orientation: int) -> np.ndarray:
    """A new C-contiguous array transposed upright for an EXIF orientation, as
    `_ORIENTATION_TRANSPOSE` does an image (OpenCV's flips and rotations: no strided NumPy copy)."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.transpose(cv2.rotate(pixels, cv2.ROTATE_180))
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Validate the target `(height, width)`; a bad one is a programming error, not bad data."""
    height, width = size
    if not all(isinstance(v, (int, np.integer)) and v > 0 for v in (height, width)):
        raise ValueError(f"size must be (height, width) in positive pixels, got {size!r}")
    return int(height), int(width)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (Pillow's are sometimes multi-line or empty)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _open(data: bytes) -> Image.Image:
    """Open the header lazily, in a supported format only, turning failures into our errors."""
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified_error(data) from None
    except Image.DecompressionBombError as exc:  # only if someone re-enabled Pillow's limit
        raise ImageTooLarge(_one_line(exc)) from exc
    except _PILLOW_DATA_ERRORS as exc:
        name = _supported_signature(data) or "image"
        raise CorruptImage(f"corrupt or truncated {name} header: {_one_line(exc)}") from exc


def _unidentified_error(data: bytes) -> ImageDecodeError:
    """Word the error for data that no supported format's reader accepted."""
    name = _supported_signature(data)
    if name:
        return CorruptImage(f"corrupt or truncated {name} image: its header cannot be read")
    detected = _detect_other_format(data)
    if detected:
        return UnsupportedImageFormat(f"unsupported image format {detected}; supported formats: {_FORMATS_LIST}")
    if _looks_like_text(data):
        return UnsupportedImageFormat(f"not an image: the data looks like text; supported formats: {_FORMATS_LIST}")
    return UnsupportedImageFormat(f"not an image in a supported format ({_FORMATS_LIST}); first bytes: {data[:8].hex(' ')}")


def _supported_signature(data: bytes) -> Optional[str]:
    """The supported format whose signature the data starts with, if any."""
    for signature, name in _SUPPORTED_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _detect_other_format(data: bytes) -> Optional[str]:
    """Name a known format that is not supported, from its signature or Pillow's readers."""
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    try:  # header only: Pillow's other readers never decode pixels in open()
        with Image.open(io.BytesIO(data)) as other:
            return other.format
    except Exception:  # any reader may fail in its own way on data that is not its format
        return None


def _looks_like_text(data: bytes) -> bool:
    """Whether the first bytes decode as UTF-8 text without control characters."""
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # the cut at 512 bytes may split a character
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _check_format_and_size(img: Image.Image, max_pixels: int) -> None:
    """Reject formats outside the supported list and declared sizes over `max_pixels`."""
    if img.format not in _ACCEPTED_FORMATS:
        raise UnsupportedImageFormat(f"unsupported image format {img.format}; supported formats: {_FORMATS_LIST}")
    width, height = img.size
    if width < 1 or height < 1:
        raise CorruptImage(f"corrupt {img.format} image: header declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{img.format} image declares {width}x{height} = {width * height:,} pixels, over the "
            f"limit of {max_pixels:,} (raise it with --max-image-pixels)"
        )


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation 1-8; 1 where absent or unreadable (no reason to fail)."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error):
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def _draft_jpeg(img: Image.Image, width: int, height: int, orientation: int) -> Optional[_Box]:
    """Ask libjpeg to decode at the smallest 1/1..1/8 scale still at least the target size.

    Returns the box of the drafted image that covers the original picture (the last row and
    column may be partly padding), in stored (not yet oriented) coordinates.
    """
    stored = (height, width) if orientation in _SWAPS_AXES else (width, height)
    drafted = img.draft("RGB", stored)
    return drafted[1] if drafted else None


def _orient(img: Image.Image, orientation: int, box: Optional[_Box]) -> tuple[Image.Image, Optional[_Box]]:
    """Transpose the loaded image upright, carrying the draft box along."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is None:
        return img, box
    if box is not None:
        box = _transpose_box(box, img.size, method)
    return img.transpose(method), box


def _transpose_box(box: _Box, size: tuple[int, int], method: Image.Transpose) -> _Box:
    """Where `box` lands when an image of `size` is transposed by `method`."""
    x0, y0, x1, y1 = box
    w, h = size
    T = Image.Transpose
    return {
        T.FLIP_LEFT_RIGHT: (w - x1, y0, w - x0, y1),
        T.FLIP_TOP_BOTTOM: (x0, h - y1, x1, h - y0),
        T.ROTATE_180: (w - x1, h - y1, w - x0, h - y0),
        T.ROTATE_90: (y0, w - x1, y1, w - x0),
        T.ROTATE_270: (h - y1, x0, h - y0, x1),
        T.TRANSPOSE: (y0, x0, y1, x1),
        T.TRANSVERSE: (h - y1, w - x1, h - y0, w - x0),
    }[method]


def _resize_to_rgb_array(img: Image.Image, box: Optional[_Box], width: int, height: int) -> np.ndarray:
    """Flatten to RGB (or L), stretch to the target with bilinear filtering, and export."""
    img = _to_rgb_or_grey(img)
    full = (0, 0, img.width, img.height)
    if img.size != (width, height) or (box is not None and box != full):
        img = img.resize((width, height), Image.Resampling.BILINEAR, box=box)
    if img.mode != "RGB":
        img = img.convert("RGB")  # greyscale is resized on one channel, then widened
    # Pillow hands numpy an immutable bytes object, so np.asarray would be read-only;
    # np.array costs one copy of the small target (microseconds) and returns a normal array.
    return np.array(img, dtype=np.uint8, order="C")


def _to_rgb_or_grey(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB or L, compositing transparency onto white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_to_grey(img)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, _WHITE)
        white.paste(rgba, mask=rgba)  # out = rgb * alpha + white * (1 - alpha)
        return white
    if img.mode in ("RGB", "L"):
        return img
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def _sixteen_bit_to_grey(img: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 8 bits by its high byte (65535 -> 255, 32768 -> 128), not clip."""
    values = np.asarray(img)
    if values.dtype != np.uint16:  # mode "I" (int32) holds 16-bit PNG samples in Pillow
        values = np.clip(values, 0, 65535).astype(np.uint16)
    return Image.fromarray((values >> 8).astype(np.uint8), "L")
