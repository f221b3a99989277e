"""toolkit.encoder.images: every common photo format and pixel mode ends as the 8-bit RGB a viewer shows; HEIC uploads."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from toolkit.errors import InputError
from toolkit.encoder.images import load_image, register_plugins, to_rgb
from toolkit.serve import create_app

from test_serve_app import make_cfg, wait_ready

RED, BLUE, WHITE = (220, 20, 20), (20, 20, 220), (255, 255, 255)


def two_tone(size=(64, 48)) -> Image.Image:
    """Left half red, right half blue: shows orientation and colour after a lossy round trip."""
    im = Image.new("RGB", size, RED)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return im


def close(pixel, colour, tol=12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


def heic_bytes(im: Image.Image, **save) -> bytes:
    assert "HEIF" in register_plugins()  # pillow-heif is a dependency
    buf = io.BytesIO()
    im.save(buf, "HEIF", quality=95, **save)
    return buf.getvalue()


def test_heic_loads_as_rgb_with_its_pixels(tmp_path):
    p = tmp_path / "IMG_0001.HEIC"
    p.write_bytes(heic_bytes(two_tone()))
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (64, 48)
    assert close(im.getpixel((5, 24)), RED) and close(im.getpixel((58, 24)), BLUE)


def test_heic_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rotated.heic"
    p.write_bytes(heic_bytes(two_tone(), exif=exif.tobytes()))
    im = load_image(p)
    assert im.size == (48, 64)  # portrait, as shown on the phone
    assert close(im.getpixel((24, 5)), RED) and close(im.getpixel((24, 58)), BLUE)


@pytest.mark.skipif("AVIF" not in register_plugins(), reason="this Pillow has no AVIF codec")
def test_avif_loads(tmp_path):
    p = tmp_path / "photo.avif"
    two_tone().save(p, "AVIF", quality=95)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (64, 48)
    assert close(im.getpixel((5, 24)), RED) and close(im.getpixel((58, 24)), BLUE)


def test_a_heic_without_pillow_heif_says_how_to_fix(tmp_path):
    p = tmp_path / "IMG_0002.heic"
    p.write_bytes(heic_bytes(two_tone()))
    code = ("import sys; sys.modules['pillow_heif'] = None\n"  # as if it were not installed
            "from toolkit.encoder.images import load_image\n"
            f"load_image({str(p)!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "IMG_0002.heic' is a HEIC/HEIF image and pillow-heif is not installed" in last
    assert "pip install pillow-heif" in last


def test_16_bit_greyscale_png_is_scaled_not_clipped_to_white(tmp_path):
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(4, 16)
    p = tmp_path / "depth16.png"
    Image.fromarray(values).save(p)
    assert Image.open(p).mode.startswith("I;16")
    got = np.asarray(load_image(p))
    assert got.shape == (4, 16, 3) and (got[..., 0] == got[..., 2]).all()
    np.testing.assert_array_equal(got[..., 0], np.rint(values / 257).astype(np.uint8))
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 32  # a gradient, not white


@pytest.mark.parametrize("mode,dtype", [("I;16", "<u2"), ("I;16B", ">u2")])
def test_16_bit_modes_of_either_byte_order_scale_by_257(mode, dtype):
    values = np.array([[0, 257, 32896, 65535]], dtype=dtype)
    im = Image.frombytes(mode, (4, 1), values.tobytes())
    assert np.asarray(to_rgb(im))[0, :, 1].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("values,expected", [
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),            # a float image in [0, 1]
    (np.array([[-5.0, 0.0, 5.0]], np.float32), [0, 128, 255]),           # any other range: stretched
    (np.array([[0.0, np.nan, 1.0]], np.float32), [0, 0, 255]),           # NaN as black
    (np.array([[0, 128, 255]], np.int32), [0, 128, 255]),                # 32-bit int holding 8-bit values
    (np.array([[0, 257, 65535]], np.int32), [0, 1, 255]),                # ... holding 16-bit values
])
def test_32_bit_greyscale_is_scaled_by_its_range(values, expected):
    im = Image.fromarray(values)
    assert im.mode in ("F", "I")
    assert np.asarray(to_rgb(im))[0, :, 0].tolist() == expected


def test_32_bit_float_tiff_file(tmp_path):
    p = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 1, 32, dtype=np.float32).reshape(2, 16)).save(p)
    got = np.asarray(load_image(p))[..., 0]
    np.testing.assert_array_equal(got, np.rint(np.linspace(0, 1, 32).reshape(2, 16) * 255))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "print.jpg"
    im = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan
    im.paste((0, 0, 0, 0), (16, 0, 32, 32))  # paper white
    im.save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    got = load_image(p)
    assert got.mode == "RGB" and close(got.getpixel((4, 16)), (0, 255, 255)) and close(got.getpixel((28, 16)), WHITE)


def test_rgba_png_is_composited_on_white(tmp_path):
    p = tmp_path / "logo.png"
    im = Image.new("RGBA", (30, 10), (0, 0, 0, 0))  # transparent black
    im.paste((200, 0, 0, 255), (10, 0, 20, 10))  # opaque red
    im.paste((0, 0, 0, 128), (20, 0, 30, 10))  # half-transparent black
    im.save(p)
    got = load_image(p)
    assert got.mode == "RGB"
    assert got.getpixel((5, 5)) == WHITE and got.getpixel((15, 5)) == (200, 0, 0)
    assert all(abs(c - 127) <= 1 for c in got.getpixel((25, 5)))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_a_transparent_index_is_composited_on_white(tmp_path, fmt):
    im = Image.new("P", (20, 10), 0)
    im.putpalette([0, 0, 0, 0, 160, 0] + [0] * 762)  # index 0 black (transparent), 1 green
    im.paste(1, (10, 0, 20, 10))
    p = tmp_path / f"icon.{fmt.lower()}"
    im.save(p, transparency=0)
    got = load_image(p)
    assert got.getpixel((5, 5)) == WHITE and got.getpixel((15, 5)) == (0, 160, 0)


def test_grey_with_alpha_is_composited_on_white():
    im = Image.new("LA", (2, 1), (0, 0))
    im.putpixel((1, 0), (50, 255))
    assert to_rgb(im).getpixel((0, 0)) == WHITE and to_rgb(im).getpixel((1, 0)) == (50, 50, 50)


@pytest.mark.parametrize("fmt,suffix", [("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")])
def test_animations_use_their_first_frame(tmp_path, fmt, suffix):
    frames = [Image.new("RGB", (24, 24), c) for c in [(240, 0, 0), (0, 0, 240), (0, 240, 0)]]
    p = tmp_path / f"anim.{suffix}"
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(p, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    with Image.open(p) as im:
        assert getattr(im, "n_frames", 1) == 3
    assert close(load_image(p).getpixel((12, 12)), (240, 0, 0), tol=4)


def test_exif_orientation_of_a_jpeg_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    p = tmp_path / "cam.jpg"
    two_tone().save(p, quality=95, exif=exif.tobytes())
    im = load_image(p)
    assert im.size == (48, 64) and close(im.getpixel((24, 58)), RED) and close(im.getpixel((24, 5)), BLUE)


def test_unreadable_files_fail_with_one_line_naming_them(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "cut.png").write_bytes(two_tone_png()[:120])
    cases = {"notes.jpg": "is not a readable image", "gone.jpg": "is a broken symbolic link to",
             "cut.png": "is not a readable image", "missing.png": "not found"}
    for name, fragment in cases.items():
        with pytest.raises(InputError) as e:
            load_image(tmp_path / name)
        msg = str(e.value)
        assert name in msg and fragment in msg and "\n" not in msg, msg
    with pytest.raises(InputError, match="deleted.jpg'; fix or remove the link"):
        load_image(tmp_path / "gone.jpg")


def two_tone_png() -> bytes:
    buf = io.BytesIO()
    two_tone().save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(make_cfg(tiny_model))) as c:
        wait_ready(c)
        yield c


@pytest.mark.parametrize("fmt,name", [("HEIF", "IMG_0003.HEIC"), ("AVIF", "photo.avif")])
def test_a_heic_or_avif_upload_is_scored_like_the_same_file_from_disk(client, tiny_extractor, tmp_path, fmt, name):
    if fmt not in register_plugins():
        pytest.skip(f"no {fmt} codec here")
    buf = io.BytesIO()
    two_tone().save(buf, fmt, quality=95)
    data = buf.getvalue()
    r = client.post("/v1/embed", files={"files": (name, data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    p = tmp_path / name
    p.write_bytes(data)
    expected = tiny_extractor.encode_images([load_image(p)])[0]
    np.testing.assert_allclose(r.json()["results"][0]["embedding"], expected, atol=1e-5)


def test_a_16_bit_png_upload_is_scaled_as_from_disk(client, tiny_extractor):
    values = np.linspace(0, 65535, 48 * 40).astype(np.uint16).reshape(40, 48)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    r = client.post("/v1/embed", files={"files": ("depth.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    expected = tiny_extractor.encode_images([to_rgb(Image.fromarray(values))])[0]
    white = tiny_extractor.encode_images([Image.new("RGB", (48, 40), WHITE)])[0]
    got = np.asarray(r.json()["results"][0]["embedding"])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - white).max() > 1e-3
