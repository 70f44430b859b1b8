"""The in-graph image decoder against PIL, the preprocessing training used, bit for bit."""

import io
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import graph_sentence
from tfmeta.tasks.image_format import ImageFormat, decode_images, omniglot_format


def encode(array: np.ndarray, mode: str, kind: str = "PNG") -> bytes:
    image = Image.fromarray(array, mode="L" if mode == "P" else mode)
    if mode == "P":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, kind, quality=90)
    return buffer.getvalue()


def decoded(files, image_format: ImageFormat) -> np.ndarray:
    floats = decode_images(tf.constant(files), image_format, "images").numpy()
    return np.round(floats * 255).astype(np.uint8)


def test_omniglot_drawings_decode_exactly_as_training_stores_them(omniglot_dir):
    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as archive:
        files = [archive.read(n) for n in archive.namelist() if n.endswith(".png")][::10]
    image_format = omniglot_format(28)
    expected = np.stack([image_format.from_pil(Image.open(io.BytesIO(f))) for f in files])
    assert len(files) > 250
    np.testing.assert_array_equal(decoded(files, image_format), expected)
    # Strokes bright on a dark background, as the model was trained.
    assert np.median(expected) == 0 and expected.max() == 255


# (mode of the file, channels of the model, file height, width): every conversion PIL makes, and
# sizes that shrink, grow and mix the two, so that both of Pillow 13's pass orders are used.
CASES = [("L", 1, 105, 105), ("RGB", 1, 300, 200), ("RGB", 3, 97, 131), ("L", 3, 84, 84),
         ("RGBA", 3, 60, 70), ("RGBA", 1, 150, 20), ("LA", 1, 100, 30), ("P", 3, 64, 64),
         ("RGB", 3, 20, 20), ("L", 1, 140, 40), ("RGB", 3, 28, 33)]


@pytest.mark.parametrize("mode, channels, height, width, kind", [
    (*case, kind) for case in CASES for kind in ("PNG", "JPEG")
    if kind == "PNG" or case[0] in ("L", "RGB")])  # JPEG has no alpha or palette
def test_any_png_or_jpeg_decodes_as_pil_converts_and_resizes_it(mode, channels, height, width,
                                                               kind):
    rng = np.random.default_rng(height * width)
    bands = {"L": 1, "P": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    file = encode(array[..., 0] if bands == 1 else array, mode, kind)
    image_format = ImageFormat(28, 33, channels, invert=channels == 1)
    expected = image_format.from_pil(Image.open(io.BytesIO(file)))
    np.testing.assert_array_equal(decoded([file], image_format)[0], expected)


def test_tensorflows_own_lanczos_would_not_match(omniglot_dir):
    """Why the decoder reimplements PIL: tf.image.resize rounds once and places taps otherwise,
    which moves the edges of Omniglot's strokes by many levels."""
    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as archive:
        files = [archive.read(n) for n in archive.namelist() if n.endswith(".png")][:50]
    image_format = omniglot_format(28)
    expected = np.stack([image_format.from_pil(Image.open(io.BytesIO(f))) for f in files])
    pages = tf.stack([tf.io.decode_png(f, channels=1) for f in files])
    stock = tf.image.resize(tf.cast(pages, tf.float32), [28, 28], "lanczos3", antialias=True)
    stock = 255 - np.clip(np.round(stock.numpy()), 0, 255)
    assert np.abs(stock - expected).max() > 10


def sixteen_bit_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def good_png() -> bytes:
    return encode(np.zeros((10, 10), np.uint8), "L")


@pytest.mark.parametrize("bad, message", [
    (b"", "query_images holds an empty string at index 1"),
    (b"GIF89a not accepted", "query_images holds bytes that are not a PNG or JPEG file at index 1"),
    (sixteen_bit_png(), "query_images holds a 16-bit PNG (save it with 8 bits per channel) at "
                        "index 1"),
    (cmyk_jpeg(), "query_images holds a CMYK JPEG at index 1; convert it to RGB or grayscale"),
    (good_png()[:60], None),  # a damaged file fails in the input's name scope
])
def test_bad_files_fail_with_the_input_and_index_named(bad, message):
    graph = tf.function(lambda files: decode_images(files, omniglot_format(28), "query_images"))
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        graph(tf.constant([good_png(), bad]))
    if message:
        assert graph_sentence(error.value) == message
    else:
        assert "query_images/" in error.value.message
