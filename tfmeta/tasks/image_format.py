"""How a dataset's image files become model inputs: once with PIL for training, and inside the
graph for serving, with the same numbers.

Training decodes every image once with PIL (`ImageFormat.from_pil`): convert to the dataset's
channels (PIL's "L" or "RGB"), resize to the training size with PIL's Lanczos filter, invert
Omniglot's black-on-white drawings so that strokes are bright, and store uint8; the model sees
uint8 / 255 in [0, 1]. An exported model's image signature runs `decode_images` on PNG or JPEG
bytes, which reimplements those steps in TensorFlow ops, PIL's arithmetic included:

- grayscale from RGB is PIL's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, an alpha channel is
  dropped, and a grayscale image is repeated into RGB, as `Image.convert` does;
- the resize is PIL's two-pass Lanczos: support 3 * scale when shrinking, coefficients normalized
  per output pixel and rounded to 22-bit fixed point, each pass rounded and clipped to uint8, the
  horizontal pass first unless the height shrinks by more than twice as many pixels as the width
  (Pillow 13's order; earlier Pillows always go horizontal first, which gives the same result for
  Omniglot's 105x105 drawings). Sums of uint8 times 22-bit integers are exact in float64, so the
  result is PIL's bit for bit. (`tf.image.resize(..., "lanczos3", antialias=True)` differs from
  PIL by up to 31 levels on 14% of Omniglot's pixels: it rounds only once and places its taps
  differently.)
- JPEG is decoded with libjpeg's accurate integer DCT, PIL's default.

Hostile files: a decoder allocates what the file's header says (a 1.6 MB PNG can declare
20000x20000 RGBA, 1.6 GB decoded), so every file's width and height are read from its header first
(a PNG's IHDR chunk, a JPEG's frame header through `tf.io.extract_jpeg_shape`) and a file with a
side over `max_side` is refused before it is decoded. Files are decoded one at a time, so a
request's decoding holds one file's pixels at once.

Cost: two small matrix products per image ([H, W] by [W, w] and [h, H]). Memory: TensorFlow's
allocator peaks at about 14 bytes per pixel of the largest file for a grayscale model and 38 for
an RGB one (the decoded uint8 pixels and one float64 copy of them), 56 MB and 152 MB for a
2048 x 2048 RGBA file.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tfmeta.refusals import first, refusal

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The largest image side an export accepts by default: every Omniglot drawing (105 pixels) and
# ImageNet photograph that MiniImagenet comes from (mostly under 1,000) with room to spare, while
# decoding one such file peaks at 56 MB (grayscale model) or 152 MB (RGB).
DEFAULT_MAX_SIDE = 2048
JPEG_SIGNATURE = b"\xff\xd8\xff"
_PRECISION_BITS = 22  # PIL's fixed point for 8-bit images: 32 - 8 - 2


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """What a model's image inputs are.

    Attributes:
        height, width: the training size; files of another size are resized to it.
        channels: 1 (grayscale, PIL "L") or 3 (RGB).
        invert: store 255 - x, so that dark strokes on a light page become bright (Omniglot).
    """
    height: int
    width: int
    channels: int
    invert: bool = False

    @property
    def shape(self) -> tuple:
        return (self.height, self.width, self.channels)

    def describe(self) -> dict:
        """The input a float signature expects, for an export's metadata."""
        return {
            "shape": list(self.shape), "range": [0.0, 1.0],
            "color": "grayscale" if self.channels == 1 else "RGB",
            "polarity": ("strokes bright (1.0) on a dark background (0.0): the files' dark-on-"
                         "light drawings inverted") if self.invert else "as in the file",
            "preprocessing": (f"{'grayscale' if self.channels == 1 else 'RGB'} as PIL converts, "
                              f"resized to {self.height}x{self.width} with PIL's Lanczos filter "
                              f"(Image.Resampling.LANCZOS), " + ("inverted (255 - x), "
                                                                  if self.invert else "")
                              + "divided by 255")}

    def from_pil(self, image) -> np.ndarray:
        """A PIL image as training stores it: uint8 [height, width, channels]."""
        from PIL import Image
        image = image.convert("L" if self.channels == 1 else "RGB")
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, dtype=np.uint8).reshape(self.shape)
        return 255 - pixels if self.invert else pixels


def decode_images(encoded: tf.Tensor, image_format: ImageFormat, name: str,
                  dtype=tf.float32, max_side: int = DEFAULT_MAX_SIDE) -> tf.Tensor:
    """PNG or JPEG files as the model's inputs, exactly as training preprocesses them.

    Args:
        encoded: string [n], one file's bytes per entry.
        image_format: the dataset's format.
        name: the input's name: the ops' name scope and the start of every error message.
        dtype: the model's float dtype.
        max_side: the largest width or height accepted, read from each file's header before
            the file is decoded.

    Returns:
        [n, height, width, channels] in [0, 1]. Raises InvalidArgumentError naming the input and
        the entries when an entry is empty, not a PNG or JPEG file, a PNG without its IHDR
        header, a 16-bit PNG or a CMYK JPEG (which PIL and TensorFlow convert differently), an
        image with a side over `max_side` (the message gives its size), or a damaged file (then
        the failing op sits in the input's name scope).
    """
    with tf.name_scope(name):
        index = tf.range(tf.size(encoded))
        empty = tf.equal(tf.strings.length(encoded), 0)
        png = tf.equal(tf.strings.substr(encoded, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)
        jpeg = tf.equal(tf.strings.substr(encoded, 0, len(JPEG_SIGNATURE)), JPEG_SIGNATURE)
        header = _png_header(encoded)
        deep = png & tf.equal(tf.strings.substr(header, 24, 1), b"\x10")
        no_ihdr = png & tf.not_equal(tf.strings.substr(header, 12, 4), b"IHDR")

        def refuse(bad, what):
            return refusal(tf.logical_not(tf.reduce_any(bad)), f"{name} holds {what} at index {{}}",
                           first(bad))

        checks = [refuse(empty, "an empty string"),
                  refuse(~(png | jpeg | empty), "bytes that are not a PNG or JPEG file"),
                  refuse(no_ihdr, "a PNG file whose first chunk is not IHDR (a damaged file)"),
                  refuse(deep, "a 16-bit PNG (save it with 8 bits per channel)")]
        with tf.control_dependencies(checks):
            encoded = tf.identity(encoded)
        # One file at a time: the side limit bounds a file, this bounds a request.
        pixels = tf.map_fn(lambda item: _decode_one(*item, image_format, name, max_side),
                           (encoded, index), parallel_iterations=1,
                           fn_output_signature=tf.TensorSpec(image_format.shape, tf.uint8))
        return unit_pixels(pixels, dtype)


def unit_pixels(pixels: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
    """uint8 pixels [...] as `dtype` in [0, 1]: each level's exact quotient k / 255, from a table
    of the 256. Training and every export share it, so a file and its array give the same input:
    in a graph, Grappler rewrites `x / 255.0` into `x * (1 / 255)`, which is 1 ulp off for 126
    of the levels in float32."""
    numpy_dtype = tf.as_dtype(dtype).as_numpy_dtype
    levels = np.arange(256, dtype=numpy_dtype) / numpy_dtype(255)
    return tf.gather(tf.constant(levels, dtype), tf.cast(pixels, tf.int32))


def _png_header(encoded: tf.Tensor) -> tf.Tensor:
    """The first 33 bytes of each file (signature, IHDR length, type, width, height, bit depth),
    zero-padded, so that reading them stays in range for any file."""
    return tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, 33),
                                              tf.constant(b"\0" * 33)]), 0, 33)


def _size(data: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] of one PNG or JPEG file, read from its header without decoding:
    a PNG's IHDR holds the width and height as big-endian uint32 at bytes 16-23."""
    def png():
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(_png_header(data), 16, 8), tf.uint8),
                      tf.int64)
        big_endian = tf.reduce_sum(tf.reshape(raw, [2, 4]) * [1 << 24, 1 << 16, 1 << 8, 1],
                                   axis=1)
        return big_endian[::-1]

    def jpeg():
        return tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)

    return tf.cond(tf.equal(tf.strings.substr(data, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE),
                   png, jpeg)


def _decode_one(data: tf.Tensor, index: tf.Tensor, image_format: ImageFormat,
                name: str, max_side: int) -> tf.Tensor:
    """One file's bytes -> uint8 [height, width, channels], as `ImageFormat.from_pil`; refused
    before decoding when a side is over `max_side`."""
    size = _size(data)
    limit = refusal(tf.reduce_max(size) <= max_side,
                    f"{name} holds an image of {{}}x{{}} pixels (width x height) at index {{}}, "
                    f"over the limit of {max_side} pixels per side set at export (tfmeta export "
                    "--max-image-side); send it resized", size[1], size[0], index)
    with tf.control_dependencies([limit]):
        data = tf.identity(data)

    def jpeg():
        cmyk = tf.equal(tf.io.extract_jpeg_shape(data)[2], 4)
        check = refusal(tf.logical_not(cmyk), f"{name} holds a CMYK JPEG at index {{}}; "
                        "convert it to RGB or grayscale", index)
        with tf.control_dependencies([check]):
            return tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")

    image = tf.cond(
        tf.equal(tf.strings.substr(data, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE),
        lambda: tf.io.decode_png(data, channels=0, dtype=tf.uint8), jpeg)
    image = _convert_channels(image, image_format.channels)
    height, width = image_format.height, image_format.width
    shrink = tf.shape(image)[0] - height
    vertical_first = (shrink > 0) & (shrink > 2 * (tf.shape(image)[1] - width))
    image = tf.cond(
        vertical_first,
        lambda: _resample(_resample(image, height, axis=0), width, axis=1),
        lambda: _resample(_resample(image, width, axis=1), height, axis=0))
    image = tf.ensure_shape(image, image_format.shape)
    return 255 - image if image_format.invert else image


def _convert_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [H, W, c] with c in 1..4 (gray, gray+alpha, RGB, RGBA) -> [H, W, channels], as PIL's
    convert("L") or convert("RGB"). Only the luma of a colour file widens, one channel at a time."""
    c = tf.shape(image)[-1]
    if channels == 1:
        def luma():
            r, g, b = (tf.cast(image[..., i], tf.int32) for i in range(3))
            gray = tf.bitwise.right_shift(19595 * r + 38470 * g + 7471 * b + 32768, 16)
            return tf.cast(gray, tf.uint8)[..., None]
        return tf.cond(c >= 3, luma, lambda: image[..., :1])
    return tf.cond(c >= 3, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))


def _lanczos(x: tf.Tensor) -> tf.Tensor:
    """PIL's Lanczos kernel: sinc(x) sinc(x / 3) on [-3, 3), 0 elsewhere."""
    def sinc(t):
        safe = tf.where(tf.equal(t, 0.0), tf.ones_like(t), t * math.pi)
        return tf.where(tf.equal(t, 0.0), tf.ones_like(t), tf.sin(safe) / safe)
    return tf.where((x >= -3.0) & (x < 3.0), sinc(x) * sinc(x / 3.0), tf.zeros_like(x))


def _coefficients(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
    """PIL's fixed-point resampling matrix [out_size, in_size] (float64 holding integers)."""
    in_size_f = tf.cast(in_size, tf.float64)
    scale = in_size_f / out_size
    filter_scale = tf.maximum(scale, 1.0)
    support = 3.0 * filter_scale
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale            # [out]
    # C's (int) truncates toward zero; floor differs only below 0, where both clamp to 0.
    low = tf.maximum(tf.math.floor(center - support + 0.5), 0.0)
    high = tf.minimum(tf.math.floor(center + support + 0.5), in_size_f)
    x = tf.range(in_size_f, dtype=tf.float64)                                 # [in]
    inside = (x[None, :] >= low[:, None]) & (x[None, :] < high[:, None])
    weights = tf.where(inside, _lanczos((x[None, :] - center[:, None] + 0.5) / filter_scale), 0.0)
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    weights = tf.math.divide_no_nan(weights, total)
    fixed = weights * float(1 << _PRECISION_BITS)
    # Rounded half away from zero, as PIL's (int)(w + 0.5) and (int)(w - 0.5).
    return tf.sign(fixed) * tf.math.floor(tf.abs(fixed) + 0.5)


def _resample(image: tf.Tensor, size: int, axis: int) -> tf.Tensor:
    """One PIL Lanczos pass along `axis` (1: horizontal, 0: vertical) of uint8 [H, W, C] to `size`,
    rounded and clipped to uint8; the identity when the axis already has that size. Both passes
    are one matrix product on the pixels as they lie (the horizontal one broadcast over rows), so
    their float64 copy is the only large tensor."""
    coefficients = _coefficients(tf.shape(image)[axis], size)               # [size, in]
    pixels = tf.cast(image, tf.float64)
    if axis == 0:
        height, width, channels = tf.unstack(tf.shape(image))
        sums = tf.reshape(tf.matmul(coefficients, tf.reshape(pixels, [height, -1])),
                          [size, width, channels])
    else:
        sums = tf.matmul(coefficients[None], pixels)                         # [H, size, C]
    rounded = tf.math.floor((sums + float(1 << (_PRECISION_BITS - 1))) / float(1 << _PRECISION_BITS))
    return tf.cast(tf.clip_by_value(rounded, 0.0, 255.0), tf.uint8)


def omniglot_format(image_size: int) -> ImageFormat:
    """Omniglot: grayscale drawings, dark strokes on white in the files, stored inverted."""
    return ImageFormat(image_size, image_size, 1, invert=True)


def miniimagenet_format(image_size: int = 84) -> ImageFormat:
    """MiniImagenet: RGB photographs."""
    return ImageFormat(image_size, image_size, 3)

