"""gen_keras.png against TensorFlow's PNG codec (libpng): the same pixels both ways, every
scanline filter, and one-line errors for PNGs that are cut, corrupt, too large or of a kind
it does not read."""

import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from gen_keras import png

SHAPES = [(5, 7, 1), (3, 6, 2), (4, 9, 3), (6, 5, 4)]  # grey, grey+alpha, RGB, RGBA


def _images(shape):
    """Noise, smooth ramps and flat runs: content on which libpng picks different filters."""
    rng = np.random.default_rng(sum(shape))
    h, w, c = shape
    ramp = (np.arange(h)[:, None, None] * 37 + np.arange(w)[None, :, None] * 11) % 256
    yield rng.integers(0, 256, shape, dtype=np.uint8)
    yield np.broadcast_to(ramp + np.arange(c) * 50, shape).astype(np.uint8)
    yield (rng.random(shape) < 0.2).astype(np.uint8) * 255


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filtered_png(image: np.ndarray, kinds: list[int], ihdr: bytes | None = None) -> bytes:
    """A PNG of image whose scanline y is written with filter kinds[y] (the PNG spec's
    forward filters 0-4, written out byte by byte, independent of gen_keras.png; 5, which
    does not exist, as 0)."""
    h, w, c = image.shape
    rows = image.reshape(h, w * c).astype(int)
    out = bytearray()
    for y in range(h):
        out.append(kinds[y])
        for x in range(w * c):
            left = rows[y, x - c] if x >= c else 0
            up = rows[y - 1, x] if y else 0
            upleft = rows[y - 1, x - c] if y and x >= c else 0
            predict = [0, left, up, (left + up) // 2, _paeth(left, up, upleft), 0][kinds[y]]
            out.append((rows[y, x] - predict) % 256)
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = ihdr or struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        png.SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(bytes(out)))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_decode_reads_what_tensorflow_encodes(shape):
    for image in _images(shape):
        decoded = png.decode(tf.io.encode_png(image).numpy())
        assert decoded.dtype == np.uint8 and decoded.shape == shape
        np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_scanline_filter_decodes_to_the_pixels_tensorflow_reads(shape):
    for image in _images(shape):
        kinds = [(y + sum(shape)) % 5 for y in range(shape[0])]  # rows cycle through 0..4
        data = _filtered_png(image, kinds)
        np.testing.assert_array_equal(tf.io.decode_png(data).numpy(), image)  # the helper is right
        np.testing.assert_array_equal(png.decode(data), image)


@pytest.mark.parametrize("shape", SHAPES)
def test_encode_and_write_give_pngs_that_tensorflow_reads_back(shape, tmp_path):
    for image in _images(shape):
        np.testing.assert_array_equal(tf.io.decode_png(png.encode(image)).numpy(), image)
    path = tmp_path / "sub" / "grid.png"
    png.write(str(path), image)
    np.testing.assert_array_equal(tf.io.decode_png(tf.io.read_file(str(path))).numpy(), image)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary left
    assert png.header(path.read_bytes()) == shape


def test_grid_lays_images_out_in_rows_with_one_pixel_gaps():
    images = np.stack([np.full([5, 7, 1], v, np.float32) for v in (0.0, 0.25, 1.0)])
    out = png.grid(images)
    assert out.dtype == np.uint8 and out.shape == (2 * 6 + 1, 2 * 8 + 1, 1)
    assert out[1, 1, 0] == 0 and out[1, 9, 0] == 64 and out[7, 1, 0] == 255
    assert out[0, 0, 0] == out[6, 8, 0] == 128  # the gaps are mid grey


def _bad(data, match, max_side=png.MAX_SIDE):
    with pytest.raises(ValueError) as error:
        png.decode(data, max_side)
    message = str(error.value)
    assert "\n" not in message and match in message, message


def test_bad_pngs_are_refused_with_one_line():
    image = next(_images((5, 7, 3)))
    good = _filtered_png(image, [4, 3, 1, 2, 0])
    idat = good.index(b"IDAT")
    _bad(b"GIF89a" + b"0" * 40, "not a PNG")
    _bad("a string", "not a PNG")
    _bad(good[:20], "without its IHDR header")
    _bad(good[:-5], "cut PNG")
    _bad(good[: idat + 10], "cut PNG")
    flipped = bytearray(good)
    flipped[idat + 8] ^= 1  # one bit of the compressed data: the CRC catches it
    _bad(bytes(flipped), "CRC of its b'IDAT' chunk")
    _bad(good, "a 7x5 PNG: at most 4 pixels a side", max_side=4)
    _bad(_filtered_png(image, [0] * 5, struct.pack(">IIBBBBB", 7, 5, 16, 2, 0, 0, 0)), "depth 16")
    _bad(_filtered_png(image, [0] * 5, struct.pack(">IIBBBBB", 7, 5, 8, 3, 0, 0, 0)), "type 3")
    _bad(_filtered_png(image, [0] * 5, struct.pack(">IIBBBBB", 7, 5, 8, 2, 0, 0, 1)), "interlace")
    # declared 5 rows, 6 sent / 4 sent: too much data never inflates past the declared size
    _bad(
        _filtered_png(np.zeros([6, 7, 3], np.uint8), [0] * 6, good[16:29]),
        "more than the 110 bytes",
    )
    _bad(
        _filtered_png(np.zeros([4, 7, 3], np.uint8), [0] * 4, good[16:29]), "holds 88 bytes of 110"
    )
    _bad(_filtered_png(image, [0, 0, 5, 0, 0]), "scanline filter 5")
    ihdr_end = 8 + 12 + 13
    unknown = good[:ihdr_end] + _chunk(b"QQQQ", b"x") + good[ihdr_end:]
    _bad(unknown, "b'QQQQ' chunk")
    ancillary = good[:ihdr_end] + _chunk(b"tEXt", b"Comment\0hi") + good[ihdr_end:]
    np.testing.assert_array_equal(png.decode(ancillary), image)  # ancillary chunks are skipped


def test_a_broken_zlib_stream_is_refused_with_one_line():
    data = b"\x00\x01garbage that is not deflate"
    bad = png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
    _bad(bad + _chunk(b"IDAT", data) + _chunk(b"IEND", b""), "does not inflate")


def test_encode_refuses_what_a_png_cannot_hold():
    for image in (np.zeros([2, 3, 1], np.float32), np.zeros([2, 3], np.uint8)):
        with pytest.raises(ValueError, match="uint8 \\[height, width, 1-4 channels\\]"):
            png.encode(image)
    with pytest.raises(ValueError, match="at least one pixel"):
        png.encode(np.zeros([0, 3, 1], np.uint8))
