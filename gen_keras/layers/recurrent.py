"""PixelRNN's recurrent layers (van den Oord, Kalchbrenner & Kavukcuoglu 2016, section 3).

Both are convolutional LSTMs over an image [batch, height, width, channels] whose output at
pixel (i, j) sees only inputs at pixels (r, c) before it in raster order (plus the pixel
itself through mask B, which the first mask-A layer of a PixelRNN makes safe):

- `RowLSTM`: rows top to bottom. Input-to-state: a 1 x k mask-B convolution along the row,
  computed for the whole image at once. State-to-state: a 1 x 3 convolution over the
  previous row's hidden state. Receptive field: a triangle above the pixel.
- `DiagonalBiLSTM`: `skew` shifts row i right by i so that the image's diagonals become
  columns; a column-wise LSTM with a 2 x 1 state-to-state kernel (the left and the upper
  neighbour in image space) runs left to right over the skewed map, once on the image and
  once on its mirror image (the right-to-left direction); `unskew` undoes the skew. The
  right-to-left map is shifted down one row so that no pixel to the right in the current
  row is seen; the sum of both maps sees every earlier pixel.

Gates per position: [i, f, o, g] = input_to_state + state_to_state;
c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g); h = sigmoid(o) * tanh(c).

Colour images: a mask-B convolution groups its output channels into contiguous blocks by
colour (R, then G, then B). Pre-activations [.., 4 * units] are read as [.., groups, 4,
units / groups], so every gate of hidden channel k belongs to k's colour block, and hidden
channels keep that block layout. The state-to-state convolutions read only strictly earlier
pixels, whose every colour is known, so they need no mask.

The recurrences are `tf.scan` loops (graph mode, XLA-compilable, static time length).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gen_keras.layers.masked import MaskedConv2D, shift_down

GATES = 4  # input, forget, output, candidate


def skew(x):
    """[B, H, W, C] -> [B, H, W + H - 1, C]: out[:, i, i + j] = x[:, i, j], zeros elsewhere."""
    _, h, w, c = x.shape
    x = tf.pad(x, [[0, 0], [0, 0], [0, h], [0, 0]])  # rows of length W + H
    # Slice, not x[:, :n]: its gradient is a Pad, where a strided slice's is StridedSliceGrad
    flat = tf.slice(tf.reshape(x, [-1, h * (w + h), c]), [0, 0, 0], [-1, h * (w + h - 1), -1])
    return tf.reshape(flat, [-1, h, w + h - 1, c])


def unskew(x, width: int):
    """[B, H, width + H - 1, C] -> [B, H, width, C]: the inverse of `skew`."""
    _, h, t, c = x.shape
    if t != width + h - 1:
        raise ValueError(
            f"unskew: a skewed map of height {h} and width {width} has {width + h - 1}"
            f" columns, got {t}"
        )
    flat = tf.pad(tf.reshape(x, [-1, h * t, c]), [[0, 0], [0, h], [0, 0]])
    return tf.slice(tf.reshape(flat, [-1, h, width + h, c]), [0, 0, 0, 0], [-1, h, width, -1])


def lstm_cell(preact, c_prev, groups: int):
    """One LSTM update. preact [..., 4u] in colour-block layout, c_prev [..., u] -> (c, h)."""
    if groups == 1:
        i, f, o, g = tf.split(preact, GATES, axis=-1)
        c = tf.sigmoid(f) * c_prev + tf.sigmoid(i) * tf.tanh(g)
        return c, tf.sigmoid(o) * tf.tanh(c)
    units = c_prev.shape[-1]
    shape = tf.shape(c_prev)
    gates = tf.reshape(preact, tf.concat([shape[:-1], [groups, GATES, units // groups]], 0))
    i, f, o, g = tf.unstack(gates, axis=-2)
    c_prev = tf.reshape(c_prev, tf.shape(i))
    c = tf.sigmoid(f) * c_prev + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return tf.reshape(c, shape), tf.reshape(h, shape)


def _neighbours(h, axis: int, offsets):
    """Concatenates h shifted along `axis` so that position p holds h[p + o] (zero outside)."""
    n = h.shape[axis]
    parts = []
    for o in offsets:
        if o == 0:
            parts.append(h)
            continue
        pad = [[0, 0]] * len(h.shape)
        pad[axis] = [max(-o, 0), max(o, 0)]
        start = [0] * len(h.shape)
        start[axis] = max(o, 0)
        size = [-1] * len(h.shape)
        size[axis] = n
        parts.append(tf.slice(tf.pad(h, pad), start, size))
    return tf.concat(parts, axis=-1)


def row_step(preact_row, state, state_kernel, groups: int):
    """One Row LSTM row: preact_row [B, W, 4u], state (c, h) [B, W, u] of the row above.

    The state-to-state 1 x 3 convolution reads h at columns j - 1, j, j + 1 of the row
    above (`state_kernel` [3u, 4u], no bias). Returns the new (c, h).
    """
    c, h = state
    preact = preact_row + tf.einsum("bwk,kn->bwn", _neighbours(h, 1, (-1, 0, 1)), state_kernel)
    return lstm_cell(preact, c, groups)


def row_lstm(preact, state_kernel, groups: int):
    """Row LSTM over rows: preact [B, H, W, 4u] (input-to-state) -> h [B, H, W, u]."""
    units = state_kernel.shape[0] // 3
    zeros = tf.zeros(tf.concat([tf.shape(preact)[:1], [preact.shape[2], units]], 0))
    rows = tf.transpose(preact, [1, 0, 2, 3])  # [H, B, W, 4u]
    _, h = tf.scan(lambda state, p: row_step(p, state, state_kernel, groups), rows, (zeros, zeros))
    return tf.transpose(h, [1, 0, 2, 3])


def diagonal_lstm(preact_forward, preact_backward, state_kernels, groups: int):
    """Diagonal BiLSTM: preacts [B, H, W, 4u] of both directions -> h [B, H, W, u].

    state_kernels [2, 2u, 4u]: per direction, the 2 x 1 kernel over the (upper, same) rows
    of the previous skewed column, i.e. the upper and the left neighbour in image space.
    Both directions run in one scan over the W + H - 1 skewed columns.
    """
    _, height, width, _ = preact_forward.shape
    units = state_kernels.shape[1] // 2
    both = tf.stack([preact_forward, tf.reverse(preact_backward, [2])])  # [2, B, H, W, 4u]
    skewed = skew(tf.reshape(both, [-1, height, width, both.shape[-1]]))
    skewed = tf.reshape(skewed, [2, -1, height, width + height - 1, both.shape[-1]])
    columns = tf.transpose(skewed, [3, 0, 1, 2, 4])  # [T, 2, B, H, 4u]

    def step(state, p):
        c, h = state  # [2, B, H, u]
        context = _neighbours(h, 2, (-1, 0))  # (upper, same) rows of the previous column
        return lstm_cell(p + tf.einsum("dbhk,dkn->dbhn", context, state_kernels), c, groups)

    zeros = tf.zeros(tf.concat([[2], tf.shape(preact_forward)[:1], [height, units]], 0))
    _, h = tf.scan(step, columns, (zeros, zeros))  # [T, 2, B, H, u]
    h = tf.reshape(tf.transpose(h, [1, 2, 3, 0, 4]), [-1, height, width + height - 1, units])
    h = tf.reshape(unskew(h, width), [2, -1, height, width, units])
    forward, backward = tf.unstack(h)  # gradient: a Pack, not two StridedSliceGrads
    # Backward h at (i, j) has seen row i right of j: use row i - 1's instead.
    return forward + shift_down(tf.reverse(backward, [2]))


class RowLSTM(keras.layers.Layer):
    """Row LSTM layer: [B, H, W, C_in] -> [B, H, W, units]; causal in raster order (mask B).

    `kernel_width` is k of the 1 x k mask-B input-to-state convolution; `color_channels`
    the image's channels (the colour blocks of inputs and outputs).
    """

    def __init__(self, units: int, kernel_width: int = 3, color_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        if units % color_channels:
            raise ValueError(f"units={units} must be divisible by {color_channels} colours")
        self.units, self.kernel_width, self.groups = units, kernel_width, color_channels
        self.input_to_state = MaskedConv2D(
            GATES * units,
            (1, kernel_width),
            "B",
            color_groups=color_channels,
            name="input_to_state",
        )

    def build(self, input_shape):
        self.input_to_state.build(input_shape)
        self.state_kernel = self.add_weight(
            name="state_to_state",
            shape=(3 * self.units, GATES * self.units),
            initializer="glorot_uniform",
        )

    def call(self, x, bias=None):
        """x [B, H, W, C_in]; bias: optional [B, 4u] added to every pre-activation (labels)."""
        return row_lstm(self.preact(x, bias), self.state_kernel, self.groups)

    def preact(self, x, bias=None):
        """Input-to-state pre-activations [B, H, W, 4u] (rows are independent)."""
        p = self.input_to_state(x)
        return p if bias is None else p + bias[:, None, None, :]


class DiagonalBiLSTM(keras.layers.Layer):
    """Diagonal BiLSTM layer: [B, H, W, C_in] -> [B, H, W, units]; sees every earlier pixel.

    Input-to-state: a 1 x 1 mask-B convolution per direction; state-to-state: 2 x 1 column
    convolutions in the skewed space.

    `reads_pixels`: the right-to-left direction also reads the image's pixel values at its
    own position through a 1 x 1 convolution (legal, as its output is used one row down).
    A PixelRNN sets it on its first layer: the 7 x 7 mask-A input convolution is the only
    path from pixels into features, and the last pixel of row i-1 enters them only in row
    i, at columns >= W-4, so without it pixels (i, j < W-4) would never see (i-1, W-1).
    """

    def __init__(self, units: int, color_channels: int = 1, reads_pixels: bool = False, **kwargs):
        super().__init__(**kwargs)
        if units % color_channels:
            raise ValueError(f"units={units} must be divisible by {color_channels} colours")
        self.units, self.groups = units, color_channels
        self.forward_input = MaskedConv2D(
            GATES * units, 1, "B", color_groups=color_channels, name="forward_input_to_state"
        )
        self.backward_input = MaskedConv2D(
            GATES * units, 1, "B", color_groups=color_channels, name="backward_input_to_state"
        )
        self.pixel_input = (
            keras.layers.Dense(GATES * units, use_bias=False, name="backward_pixel_input")
            if reads_pixels
            else None
        )

    def build(self, input_shape):
        self.forward_input.build(input_shape)
        self.backward_input.build(input_shape)
        self.state_kernels = self.add_weight(
            name="state_to_state",
            shape=(2, 2 * self.units, GATES * self.units),
            initializer="glorot_uniform",
        )

    def call(self, x, bias=None, pixels=None):
        """x [B, H, W, C_in]; bias: optional [B, 4u] added to both directions (labels);
        pixels [B, H, W, C] (network-scaled image), required with `reads_pixels`."""
        forward, backward = self.forward_input(x), self.backward_input(x)
        if bias is not None:
            forward += bias[:, None, None, :]
            backward += bias[:, None, None, :]
        if self.pixel_input is not None:
            backward += self.pixel_input(pixels)
        return diagonal_lstm(forward, backward, self.state_kernels, self.groups)
