"""Hostile image files: headers that declare far more pixels than the file carries."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int = 20000, height: int = 20000, color_type: int = 6) -> bytes:
    """A valid 8-bit PNG of `width` x `height` zero pixels (color type 6: RGBA, 0: grayscale):
    20000 x 20000 RGBA is 1.6 GB decoded from about 1.6 MB.

    The rows are deflated in blocks that each end with a full flush, so every block after the
    first compresses to the same bytes and is compressed once; zlib's Adler-32 of the whole
    stream is computed over the repeated block."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\0" * (1 + width * channels)  # filter type 0, then the row's zero bytes
    rows = min(height, 64)
    block = row * rows
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header and check by hand
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    blocks = height // rows
    tail = deflate.compress(row * (height % rows)) + deflate.flush()
    check = 1
    for _ in range(blocks):
        check = zlib.adler32(block, check)
    check = zlib.adler32(row * (height % rows), check)
    stream = (b"\x78\xda" + first + repeated * (blocks - 1) + tail
              + struct.pack(">I", check & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream)
            + _chunk(b"IEND", b""))


def jpeg_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) is rewritten to declare `width` x
    `height`: a decoder would allocate for the declared size."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height, width
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def legal_png(side: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A large legal PNG of noise (incompressible, so as large on the wire as in memory)."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, channels), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(buffer, "PNG",
                                                                           compress_level=1)
    return buffer.getvalue()
