"""Tests of `transforms.embed.decode`: every mode and format we accept, and every way bytes can be bad."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from transforms.embed.decode import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SUPPORTED_FORMATS,
    CorruptImage,
    EmptyImageFile,
    ImageDecodeError,
    ImageTooLarge,
    UnsupportedImageFormat,
    decode_image,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    """Save a Pillow image to bytes in `fmt`."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    """An RGB image whose left half is `left` and right half is `right`."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:, : width // 2] = left
    pixels[:, width // 2 :] = right
    return Image.fromarray(pixels)


def smooth(width: int, height: int) -> Image.Image:
    """A smooth two-way colour gradient, kind to JPEG at any scale."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def with_exif_orientation(img: Image.Image, orientation: int, **params) -> bytes:
    """A JPEG of `img` (stored as is) carrying EXIF orientation `orientation`."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, **params)


def reference(data: bytes, height: int, width: int) -> np.ndarray:
    """Full-size decode, EXIF transpose, RGB, Pillow bilinear resize: what `load_img` does."""
    with Image.open(io.BytesIO(data)) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    return np.asarray(upright.resize((width, height), Image.Resampling.BILINEAR))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and CRC."""
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares `width`x`height` RGB but whose IDAT holds a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def assert_user_message(exc: ImageDecodeError, *fragments: str) -> None:
    """The error is a ValueError with a one-line message containing every fragment."""
    message = str(exc)
    assert isinstance(exc, ValueError)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def assert_colour(pixels: np.ndarray, colour, tolerance: int = 0) -> None:
    """Every pixel is within `tolerance` of `colour` in every channel."""
    diff = np.abs(pixels.astype(int) - np.array(colour)).max()
    assert diff <= tolerance, f"max channel difference {diff} from {colour}"


# --- bad bytes -------------------------------------------------------------------------------


def test_zero_bytes_are_an_empty_file():
    with pytest.raises(EmptyImageFile) as info:
        decode_image(b"", (8, 8))
    assert_user_message(info.value, "empty", "0 bytes")


def test_truncated_jpeg_is_corrupt():
    data = encode(smooth(200, 150), "JPEG", quality=90)
    with pytest.raises(CorruptImage) as info:
        decode_image(data[: len(data) // 2], (32, 32))
    assert_user_message(info.value, "JPEG", "truncated")


def test_jpeg_cut_inside_its_header_is_corrupt_not_unsupported():
    data = encode(smooth(200, 150), "JPEG", exif=Image.Exif())
    with pytest.raises(CorruptImage) as info:
        decode_image(data[:30], (32, 32))
    assert_user_message(info.value, "JPEG")


def test_truncated_png_is_corrupt():
    data = encode(smooth(200, 150), "PNG")
    with pytest.raises(CorruptImage) as info:
        decode_image(data[: len(data) // 2], (32, 32))
    assert_user_message(info.value, "PNG", "truncated")


def test_random_bytes_are_not_an_image():
    data = np.random.default_rng(7).bytes(2048)
    with pytest.raises(UnsupportedImageFormat) as info:
        decode_image(data, (8, 8))
    assert_user_message(info.value, "not an image", *SUPPORTED_FORMATS)


def test_text_is_not_an_image_and_the_message_says_text():
    data = "id,caption\n1,a dog on a beach\n2,un café au lait\n".encode()
    with pytest.raises(UnsupportedImageFormat) as info:
        decode_image(data, (8, 8))
    assert_user_message(info.value, "not an image", "text")


@pytest.mark.parametrize("fmt", ["TIFF", "PDF", "ICO"])
def test_real_image_in_an_unsupported_format_is_named(fmt):
    data = encode(Image.new("RGB", (16, 16), GREEN), fmt)
    with pytest.raises(UnsupportedImageFormat) as info:
        decode_image(data, (8, 8))
    assert_user_message(info.value, f"format {fmt}", "supported formats: JPEG, PNG")


@pytest.mark.parametrize("size", [(0, 8), (8, -1), (8.0, 8)])
def test_bad_target_size_is_a_programming_error_not_an_image_error(size):
    data = encode(Image.new("RGB", (4, 4)), "PNG")
    with pytest.raises(ValueError, match="size must be") as info:
        decode_image(data, size)
    assert not isinstance(info.value, ImageDecodeError)


# --- decompression bombs ---------------------------------------------------------------------


def test_declared_bomb_is_rejected_from_the_header_quickly():
    data = png_header_only(60_000, 60_000)  # 3.6 gigapixels (10.8 GB as RGB) in 80 bytes
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, (224, 224))
    assert time.perf_counter() - started < 1.0
    limit = f"{DEFAULT_MAX_IMAGE_PIXELS:,}"
    assert_user_message(info.value, "60000x60000", limit, "--max-image-pixels")


def test_custom_limit_below_an_ordinary_image_rejects_it_and_the_boundary_passes():
    data = encode(Image.new("RGB", (100, 80), RED), "JPEG")
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, (32, 32), max_pixels=7_999)
    assert_user_message(info.value, "100x80", "7,999", "--max-image-pixels")
    assert decode_image(data, (32, 32), max_pixels=8_000).shape == (32, 32, 3)


def test_our_limit_applies_above_pillows_default_limit():
    # A 15000x15000 JPEG header (225 MP) is over twice Pillow's default limit, which would raise
    # DecompressionBombError in Image.open. With our limit raised it is let through to decoding
    # (drafted at 1/8 scale, so ~3.5 MB) and fails only because its data is too short. The end
    # marker is cut too: libjpeg pads a scan that reaches it early instead of failing.
    data = bytearray(encode(Image.new("L", (64, 48), 128), "JPEG")[:-2])
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 15_000, 15_000)  # height, width
    with pytest.raises(ImageTooLarge, match="15000x15000"):
        decode_image(bytes(data), (8, 8))
    with pytest.raises(CorruptImage, match="truncated"):
        decode_image(bytes(data), (8, 8), max_pixels=300_000_000)


# --- sizes, modes and formats ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_every_supported_format_decodes_to_rgb(fmt):
    lossless = fmt in ("PNG", "GIF", "BMP")
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(Image.new("RGB", (40, 30), (200, 40, 90)), fmt, **params)
    out = decode_image(data, (30, 40))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert_colour(out, (200, 40, 90), tolerance=0 if lossless or fmt == "WEBP" else 3)


def test_output_is_a_normal_writeable_array():
    out = decode_image(encode(Image.new("RGB", (10, 10), RED), "PNG"), (5, 7))
    assert out.shape == (5, 7, 3) and out.flags.c_contiguous and out.flags.writeable


def test_one_pixel_image_upscales_to_its_colour():
    out = decode_image(encode(Image.new("RGB", (1, 1), (12, 34, 56)), "PNG"), (224, 224))
    assert out.shape == (224, 224, 3)
    assert_colour(out, (12, 34, 56))


def test_one_by_thousand_image_is_stretched_whole():
    top_red_bottom_blue = halves(1000, 1).transpose(Image.Transpose.TRANSPOSE)
    data = encode(top_red_bottom_blue, "PNG")
    assert Image.open(io.BytesIO(data)).size == (1, 1000)
    out = decode_image(data, (64, 48))
    assert out.shape == (64, 48, 3)
    assert_colour(out[:30], RED)
    assert_colour(out[-30:], BLUE)


def test_resize_matches_pillow_bilinear_like_keras_load_img():
    data = encode(smooth(300, 200), "PNG")
    np.testing.assert_array_equal(decode_image(data, (96, 128)), reference(data, 96, 128))


def test_greyscale_becomes_three_equal_channels():
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    out = decode_image(encode(Image.fromarray(grey, "L"), "PNG"), (32, 64))
    assert out.shape == (32, 64, 3)
    np.testing.assert_array_equal(out[..., 0], grey)
    np.testing.assert_array_equal(out[..., 1], grey)
    np.testing.assert_array_equal(out[..., 2], grey)


def test_one_bit_image_becomes_black_and_white():
    bits = Image.new("1", (8, 8), 0)
    bits.paste(1, (4, 0, 8, 8))
    out = decode_image(encode(bits, "PNG"), (8, 8))
    assert_colour(out[:, :4], (0, 0, 0))
    assert_colour(out[:, 4:], WHITE)


def test_rgba_transparent_pixels_become_white_and_opaque_ones_keep_their_colour():
    rgba = np.zeros((10, 30, 4), np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # opaque red
    rgba[:, 10:20] = (0, 0, 255, 0)  # fully transparent (blue that must not show)
    rgba[:, 20:] = (255, 0, 0, 128)  # half-transparent red
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), (10, 30))
    assert_colour(out[:, :10], RED)
    assert_colour(out[:, 10:20], WHITE)
    assert_colour(out[:, 20:], (255, 127, 127), tolerance=1)


def test_greyscale_with_alpha_is_composited_onto_white():
    la = Image.new("LA", (6, 6), (0, 255))
    la.paste((0, 0), (3, 0, 6, 6))
    out = decode_image(encode(la, "PNG"), (6, 6))
    assert_colour(out[:, :3], (0, 0, 0))
    assert_colour(out[:, 3:], WHITE)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt):
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] + list(GREEN) + [0, 0, 0] * 254)
    pal.paste(1, (0, 0, 4, 8))  # left half green, right half index 0 (transparent)
    out = decode_image(encode(pal, fmt, transparency=0), (8, 8))
    assert_colour(out[:, :4], GREEN)
    assert_colour(out[:, 4:], WHITE)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_colour(decode_image(data, (16, 16)), RED, tolerance=4)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 256, 32768, 65535]], np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, (1, 4))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_multi_picture_jpeg_from_a_camera_gives_its_first_picture():
    first, second = Image.new("RGB", (32, 24), RED), Image.new("RGB", (32, 24), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert_colour(decode_image(data, (12, 16)), RED, tolerance=4)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_colour(decode_image(data, (8, 8)), RED)


# --- EXIF orientation and JPEG draft mode ----------------------------------------------------


@pytest.mark.parametrize(
    "orientation, top, bottom",
    [(6, RED, BLUE), (8, BLUE, RED)],  # 6: rotate 90 clockwise to view; 8: 90 anticlockwise
)
@pytest.mark.parametrize("stored_width", [64, 1600])  # 1600 takes the draft path
def test_exif_rotation_is_applied_before_resizing(orientation, top, bottom, stored_width):
    data = with_exif_orientation(halves(stored_width, stored_width // 2), orientation, quality=95)
    out = decode_image(data, (64, 32))  # (height, width): upright is portrait
    assert out.shape == (64, 32, 3)
    assert_colour(out[:28], top, tolerance=8)
    assert_colour(out[36:], bottom, tolerance=8)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_rotation_is_honoured_outside_jpeg_too(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(halves(64, 32), fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
    out = decode_image(data, (64, 32))
    assert_colour(out[:30], RED)
    assert_colour(out[34:], BLUE)


def test_exif_flip_is_applied():
    data = with_exif_orientation(halves(64, 32), 2, quality=95)  # mirror left-right
    out = decode_image(data, (32, 64))
    assert_colour(out[:, :28], BLUE, tolerance=8)
    assert_colour(out[:, 36:], RED, tolerance=8)


@pytest.fixture
def draft_calls(monkeypatch):
    """Record every JPEG draft request as (requested size, drafted size)."""
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


@pytest.mark.parametrize("progressive", [False, True])
def test_large_jpeg_is_drafted_and_close_to_a_full_decode(draft_calls, progressive):
    data = encode(smooth(1601, 1203), "JPEG", quality=90, progressive=progressive)
    out = decode_image(data, (150, 200))
    assert draft_calls == [((200, 150), (201, 151))]  # decoded at 1/8 scale, not below target
    diff = np.abs(out.astype(int) - reference(data, 150, 200)).mean()
    assert diff < 8, f"mean abs difference {diff:.2f} from a full decode"


def test_draft_request_swaps_axes_for_a_rotated_jpeg(draft_calls):
    data = with_exif_orientation(smooth(1600, 800), 6)
    out = decode_image(data, (200, 100))  # upright is 800 wide, 1600 high
    assert out.shape == (200, 100, 3)
    assert draft_calls == [((200, 100), (200, 100))]


def test_small_jpeg_is_decoded_at_full_scale(draft_calls):
    data = encode(smooth(500, 375), "JPEG")
    out = decode_image(data, (224, 224))
    assert draft_calls == [((224, 224), (500, 375))]
    np.testing.assert_array_equal(out, reference(data, 224, 224))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_drafted_jpeg_keeps_true_geometry_in_every_orientation(orientation):
    # 161x81 with an 8-pixel white border right and bottom: at 1/8 scale the last drafted
    # column and row are mostly padding, so a resize that ignored it would smear the border.
    stored = np.zeros((81, 161), np.uint8)
    stored[:, -8:] = 255
    stored[-8:, :] = 255
    data = with_exif_orientation(Image.fromarray(stored), orientation, quality=100)
    target = (20, 10) if orientation >= 5 else (10, 20)
    diff = np.abs(decode_image(data, target).astype(int) - reference(data, *target)).mean()
    assert diff < 6, f"mean abs difference {diff:.2f} from a full decode"


# --- determinism, threads, real photos -------------------------------------------------------


@pytest.mark.parametrize("fmt, size", [("JPEG", (1200, 900)), ("PNG", (300, 200))])
def test_same_bytes_give_bit_identical_arrays(fmt, size):
    data = encode(smooth(*size), fmt)
    np.testing.assert_array_equal(decode_image(data, (224, 224)), decode_image(data, (224, 224)))


def test_concurrent_decodes_equal_sequential_ones():
    images = [
        encode(smooth(500, 375), "JPEG"),
        with_exif_orientation(halves(800, 400), 6),
        encode(Image.new("RGBA", (50, 60), (10, 20, 30, 40)), "PNG"),
        encode(Image.new("L", (90, 40), 77), "GIF"),
    ] * 4
    expected = [decode_image(data, (64, 64)) for data in images]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda data: decode_image(data, (64, 64)), images))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.shared_data
def test_real_imagenette_photos_including_greyscale(shared_data):
    folder = shared_data / "images" / "imagenette-sample"
    if not (folder / "MANIFEST.csv").is_file():
        pytest.skip(f"{folder} has no MANIFEST.csv (see ../shared/data/README.md)")
    with open(folder / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    grey = [row for row in rows if row["mode"] == "L"]
    colour = [row for row in rows if row["mode"] == "RGB"]
    assert grey and colour
    for row in grey[:3] + colour[:3]:
        data = (folder / row["path"]).read_bytes()
        height, width = int(row["height"]), int(row["width"])
        out = decode_image(data, (height, width))
        assert out.shape == (height, width, 3)
        with Image.open(io.BytesIO(data)) as img:
            assert img.mode == row["mode"]
            np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))
        if row["mode"] == "L":
            assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        else:
            assert not (out[..., 0] == out[..., 2]).all()
        small = decode_image(data, (96, 128))
        assert small.shape == (96, 128, 3) and 20 < small.mean() < 235
