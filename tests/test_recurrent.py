"""Row LSTM and Diagonal BiLSTM layers: skew/unskew, exact receptive fields, shapes, XLA."""

import numpy as np
import pytest
import tensorflow as tf

from gen_keras.layers import recurrent

B, H, W, U = 3, 5, 7, 4  # distinct sizes: a swapped axis fails


def test_skew_shifts_row_i_right_by_i_and_unskew_inverts_it():
    x = tf.random.stateless_normal([B, H, W, 2], [0, 1])
    s = recurrent.skew(x).numpy()
    assert s.shape == (B, H, W + H - 1, 2)
    for i in range(H):
        np.testing.assert_array_equal(s[:, i, i : i + W], x[:, i])
        outside = np.ones(W + H - 1, bool)
        outside[i : i + W] = False
        assert not s[:, i, outside].any()
    np.testing.assert_array_equal(recurrent.unskew(recurrent.skew(x), W), x)
    with pytest.raises(ValueError, match="columns"):
        recurrent.unskew(x, W)


def _receptive_field(fn, i, j):
    """Pixels (r, c) of preact [B, H, W, 4U] whose gradient reaches fn(preact)[:, i, j]."""
    preact = tf.random.stateless_normal([B, H, W, 4 * U], [i, j])
    with tf.GradientTape() as tape:
        tape.watch(preact)
        out = tf.reduce_sum(fn(preact)[:, i, j])
    grad = tape.gradient(out, preact).numpy()
    return np.abs(grad).sum(axis=(0, 3)) > 0


@pytest.mark.parametrize("i, j", [(0, 0), (0, 4), (3, 3), (4, 0), (4, 6)])
def test_row_lstm_sees_a_triangle_above_and_the_row_to_the_left(i, j):
    """With identity input-to-state: (r, c) with r < i and |c - j| <= i - r, plus (i, j)."""
    kernel = tf.random.stateless_normal([3 * U, 4 * U], [1, 1])
    seen = _receptive_field(lambda p: recurrent.row_lstm(p, kernel, 1), i, j)
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    np.testing.assert_array_equal(seen, (r < i) & (np.abs(c - j) <= i - r) | (r == i) & (c == j))


@pytest.mark.parametrize("i, j", [(0, 0), (0, 4), (3, 3), (4, 0), (4, 6)])
def test_diagonal_bilstm_sees_exactly_the_past(i, j):
    """With identity input-to-state: every pixel before (i, j) in raster order, and (i, j)."""
    kernels = tf.random.stateless_normal([2, 2 * U, 4 * U], [2, 2])
    seen = _receptive_field(lambda p: recurrent.diagonal_lstm(p, p, kernels, 1), i, j)
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    np.testing.assert_array_equal(seen, (r < i) | (r == i) & (c <= j))


def test_diagonal_directions_cover_left_quadrant_and_rows_above():
    """Left-to-right sees (r <= i, c <= j); right-to-left (shifted) sees (r < i, c >= j)."""
    kernels = tf.random.stateless_normal([2, 2 * U, 4 * U], [3, 3])
    zeros = tf.zeros([B, H, W, 4 * U])
    i, j = 3, 2
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    forward = _receptive_field(lambda p: recurrent.diagonal_lstm(p, zeros, kernels, 1), i, j)
    np.testing.assert_array_equal(forward, (r <= i) & (c <= j))
    backward = _receptive_field(lambda p: recurrent.diagonal_lstm(zeros, p, kernels, 1), i, j)
    np.testing.assert_array_equal(backward, (r < i) & (c >= j))


def test_colour_groups_keep_hidden_channel_blocks_apart():
    """Gate block g of pixel (i, j) feeds only hidden block g there (no cross-colour leak)."""
    groups, units = 3, 6
    c_prev = tf.zeros([2, units])
    preact = tf.random.stateless_normal([2, 4 * units], [4, 4])
    with tf.GradientTape() as tape:
        tape.watch(preact)
        _, h = recurrent.lstm_cell(preact, c_prev, groups)
        out = tf.reduce_sum(h[:, : units // groups])  # the R block of h
    grad = tape.gradient(out, preact).numpy()
    block = 4 * units // groups
    assert np.abs(grad[:, :block]).sum() > 0 and not grad[:, block:].any()


@pytest.mark.parametrize("layer_cls", [recurrent.RowLSTM, recurrent.DiagonalBiLSTM])
def test_layer_shapes_parameter_counts_and_xla(layer_cls):
    layer = layer_cls(U, color_channels=1)
    x = tf.random.stateless_normal([B, H, W, 6], [5, 5])
    out = layer(x)
    assert out.shape == (B, H, W, U)
    if layer_cls is recurrent.RowLSTM:  # 1x3 mask B keeps 2 columns; state 3U -> 4U
        assert layer.count_params() == 2 * 6 * 4 * U + 4 * U + 3 * U * 4 * U
    else:  # two 1x1 convs; two 2x1 state kernels
        assert layer.count_params() == 2 * (6 * 4 * U + 4 * U) + 2 * 2 * U * 4 * U
    jitted = tf.function(layer, jit_compile=True)(x)
    np.testing.assert_allclose(jitted, out, atol=1e-5)
    bias = tf.random.stateless_normal([B, 4 * U], [6, 6])
    assert not np.allclose(layer(x, bias), out)
