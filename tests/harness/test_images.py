"""Bad-input catalogue for images: every odd file either becomes honest 8-bit RGB or a clear, named error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mige_bench import images
from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef, open_rgb, save_png_atomic


def _save(image: Image.Image, path, format: str = "PNG"):
    image.save(path, format=format)
    return path


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
    path = _save(Image.fromarray(np.full((16, 16), 77, np.uint8), mode="L"), tmp_path / "gray.png")
    array = np.asarray(open_rgb(path))
    assert array.shape == (16, 16, 3)
    assert (array == 77).all()


def test_rgba_loses_its_alpha_like_the_reference_scripts_convert(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent everywhere but the first row
    rgba[1:, :, 1] = 90  # and some green where it is transparent
    rgba[0, :, 3] = 255
    path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
    array = np.asarray(open_rgb(path))
    # .convert("RGB") (PROTOCOLS.md §1) keeps the colour under the alpha instead of compositing it on anything.
    assert (array[0] == [255, 0, 0]).all()
    assert (array[1:] == [255, 90, 0]).all()


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(np.full((16, 16), 32768, np.uint16)),
        Image.fromarray(np.full((16, 16), 70_000, np.int32)),
        Image.fromarray(np.full((16, 16), 0.5, np.float32)),
    ],
    ids=["16-bit", "32-bit", "float"],
)
def test_deeper_than_8_bit_images_are_refused_rather_than_clipped(tmp_path, image):
    path = tmp_path / "deep.tiff"
    image.save(path)
    with pytest.raises(MigeBenchError, match=r"deep\.tiff: .* more than 8 bits per channel.*8-bit RGB"):
        open_rgb(path)


def test_palette_image_keeps_its_colours(tmp_path):
    image = Image.new("P", (16, 16))
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.paste(1, (0, 0, 16, 16))
    array = np.asarray(open_rgb(_save(image, tmp_path / "palette.png")))
    assert (array == [10, 200, 30]).all()


def test_wrong_extension_is_read_by_content(tmp_path):
    path = _save(Image.new("RGB", (16, 16), (1, 2, 3)), tmp_path / "actually_png.jpg", format="PNG")
    assert np.asarray(open_rgb(path))[0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", r"empty \(0 bytes\)"), (b"not an image at all", "not a readable image")],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(MigeBenchError, match=message) as error:
        open_rgb(path)
    assert str(path) in str(error.value)


def test_truncated_file_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(MigeBenchError, match=r"truncated\.png"):
        open_rgb(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(MigeBenchError, match=r"nowhere\.png: image file not found"):
        open_rgb(tmp_path / "nowhere.png")


def test_tiny_image_is_refused(tmp_path):
    with pytest.raises(MigeBenchError, match="1x1, below the 8-pixel minimum"):
        open_rgb(_save(Image.new("RGB", (1, 1)), tmp_path / "dot.png"))


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    path = _save(Image.new("RGB", (200, 100)), tmp_path / "wide.png")
    with pytest.raises(MigeBenchError, match="200x100, over the 10,000-pixel limit"):
        open_rgb(path)


def test_image_ref_from_bytes_and_content_hash_is_path_independent(tmp_path):
    image = Image.new("RGB", (16, 16), (9, 9, 9))
    in_memory = ImageRef.from_pil(image, label="x")
    on_disk = tmp_path / "x.png"
    on_disk.write_bytes(in_memory.data)
    assert ImageRef(path=on_disk).content_hash() == in_memory.content_hash()
    assert np.array_equal(np.asarray(in_memory.open()), np.asarray(image))


def test_atomic_png_write_leaves_no_temporary_files_and_is_deterministic(tmp_path):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8))
    save_png_atomic(image, tmp_path / "a.png")
    save_png_atomic(image, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
