"""PNG images without TensorFlow: a grid of images, encode and write, a checked header and
decode.

The serving command line and the REST client read and write PNGs with these, so a client
starts in a fraction of a second instead of importing TensorFlow. `decode` reads every
8-bit, non-interlaced PNG: grey, grey+alpha, RGB and RGBA (colour types 0, 4, 2 and 6) with
any of the five scanline filters, which covers all that `tf.io.encode_png` writes. Anything
else, and a PNG that is cut, corrupt or wider or taller than `max_side`, raises ValueError
with one line, before more than the declared image is inflated.
"""

from __future__ import annotations

import math
import os
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SIDE = 4096  # pixels a side read by default (the serving CLI refuses larger samples)
_COLOUR_TYPES = {0: 1, 4: 2, 2: 3, 6: 4}  # PNG colour type -> channels (8-bit samples)


def grid(images, columns: int | None = None) -> np.ndarray:
    """float [N, H, W, C] in [0, 1] -> uint8 [rows*(H+1)+1, columns*(W+1)+1, C], 1-pixel gaps."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    out = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 0.5, np.float32)
    for i in range(n):
        r, col = divmod(i, columns)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = (
            images[i]
        )
    return (out * 255.0 + 0.5).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(image) -> bytes:
    """uint8 [H, W, C], C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) -> PNG bytes."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"a PNG is written from uint8 [height, width, 1-4 channels], got {image.dtype} "
            f"{list(image.shape)}"
        )
    h, w, c = image.shape
    if h == 0 or w == 0:
        raise ValueError(f"a PNG needs at least one pixel a side, got {h}x{w}")
    colour = {n: t for t, n in _COLOUR_TYPES.items()}[c]
    # Filter type 0 on every scanline: MNIST-like images compress well without prediction.
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * c)], axis=1)
    return b"".join(
        [
            SIGNATURE,
            _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )


def write(path: str, image) -> None:
    """uint8 [H, W, C] -> a PNG file at path, written to a temporary and renamed into place."""
    data = encode(image)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def header(data, max_side: int = MAX_SIDE) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's IHDR chunk, read before anything is inflated.

    ValueError for anything but an 8-bit non-interlaced grey/RGB(A) PNG at most max_side
    pixels a side.
    """
    if not isinstance(data, bytes) or not data.startswith(SIGNATURE):
        raise ValueError("something that is not a PNG (no PNG signature)")
    if len(data) < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\0\0\0\r":
        raise ValueError("a PNG without its IHDR header")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", data[16:29]
    )
    if not (1 <= width <= max_side and 1 <= height <= max_side):
        raise ValueError(f"a {width}x{height} PNG: at most {max_side} pixels a side are read")
    if depth != 8 or colour not in _COLOUR_TYPES:
        raise ValueError(
            f"a PNG of bit depth {depth} and colour type {colour}: only 8-bit grey, grey+alpha, "
            "RGB and RGBA (colour types 0, 4, 2, 6) are read"
        )
    if compression or filtering or interlace:
        raise ValueError(
            f"a PNG with compression {compression}, filter method {filtering} and interlace "
            f"{interlace}: only 0, 0 and 0 (not interlaced) are read"
        )
    return height, width, _COLOUR_TYPES[colour]


def _image_data(data: bytes) -> bytes:
    """The IDAT payload of a PNG, every chunk's CRC checked, up to IEND."""
    parts, pos = [], 8
    while True:
        if pos + 12 > len(data):
            raise ValueError("a cut PNG: it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f"a cut PNG: its {kind!r} chunk declares {length} bytes past the end")
        body = data[pos + 8 : end - 4]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise ValueError(f"a corrupt PNG: the CRC of its {kind!r} chunk does not match")
        if kind == b"IEND":
            return b"".join(parts)
        if kind == b"IDAT":
            parts.append(body)
        elif kind != b"IHDR" and not kind[:1].islower():  # unknown critical chunk
            raise ValueError(f"a PNG with a {kind!r} chunk, which this reader does not know")
        pos = end


def _average(line: bytearray, prev: bytes, bpp: int) -> None:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF


def _paeth(line: bytearray, prev: bytes, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


def decode(data, max_side: int = MAX_SIDE) -> np.ndarray:
    """PNG bytes -> uint8 [height, width, channels]; ValueError (one line) if not readable."""
    height, width, channels = header(data, max_side)
    stride = width * channels
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(_image_data(data), expected + 1)
    except zlib.error as e:
        raise ValueError(f"a corrupt PNG: its image data does not inflate ({e})") from None
    if len(raw) > expected:
        raise ValueError(
            f"a corrupt PNG: its image data holds more than the {expected} bytes declared"
        )
    if len(raw) < expected:
        raise ValueError(
            f"a corrupt PNG: its image data holds {len(raw)} bytes of {expected} declared"
        )
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    if rows[:, 0].max() > 4:
        raise ValueError(f"a corrupt PNG: scanline filter {rows[:, 0].max()} (only 0-4 exist)")
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y, kind in enumerate(rows[:, 0]):
        line = rows[y, 1:]
        if kind == 0:
            out[y] = line
        elif kind == 1:  # Sub: add the byte one pixel to the left (a running sum per channel)
            out[y] = np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint8).ravel()
        elif kind == 2:  # Up: add the byte above
            out[y] = line + prev
        else:  # Average and Paeth predict from the left byte just decoded: one byte at a time
            decoded = bytearray(line.tobytes())
            (_average if kind == 3 else _paeth)(decoded, prev.tobytes(), channels)
            out[y] = np.frombuffer(bytes(decoded), np.uint8)
        prev = out[y]
    return out.reshape(height, width, channels)
