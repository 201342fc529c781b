"""Masked (causal) convolutions and the PixelCNN / Gated PixelCNN blocks built from them.

Pixels are ordered in raster order (row by row, left to right) and, with `color_groups`
G > 1, the G colour channels of a pixel in order R -> G -> B: feature channels are split
into G contiguous blocks and block g of a layer's output may see block g' of its input at
the same pixel only if g' < g (mask A) or g' <= g (mask B). Output at pixel (i, j):

    mask "A": input rows above i (within the kernel) and row i left of j; at (i, j) itself
              only earlier colour groups (nothing when G = 1). The first layer on images.
    mask "B": the same plus the same colour group at (i, j). Every later layer.
    mask "V": input rows <= i, all kernel columns (the vertical stack of the gated PixelCNN,
              whose input at row i must itself depend only on rows < i). No colour groups.

The kernel variable holds only the taps a mask can keep: the rows below the centre are
never created (a 3x3 mask-B conv is a 2x3 kernel with explicit padding), and a 1xk kernel
keeps only its left half and centre. The remaining mask (right of the centre, colour
groups at the centre) is a numpy constant built once in `build`; `call` multiplies the
kernel by it and never assigns to the variable.

For cached sampling (Ramachandran et al. 2017) a layer's output at (i, j) is split into
`from_rows` (the rows fully known when row i starts; computed once per row, with the
bias) plus the current row's taps at columns j - kw//2 .. j: either `from_columns` on
that window, or `step`, which keeps a queue of partial sums so that each input is
multiplied once, when it appears. Their sum equals `call` up to float rounding.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from gen_keras.config import check, check_choice
from gen_keras.layers.precision import current

MASK_TYPES = ("A", "B", "V")
WIDE_FILTERS = 128  # see MaskedConv2D.build


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def causal_mask(
    rows: int, cols: int, cin: int, cout: int, mask_type: str, groups: int, centre_col: int
) -> np.ndarray:
    """float32 [rows, cols, cin, cout] mask of a cropped kernel whose last row is row i.

    Column `centre_col` of the last row is pixel (i, j); columns after it are zero for A/B.
    """
    mask = np.ones((rows, cols, cin, cout), np.float32)
    if mask_type == "V":
        return mask
    mask[-1, centre_col + 1 :] = 0.0
    group_in = np.arange(cin) // (cin // groups)
    group_out = np.arange(cout) // (cout // groups)
    allowed = group_in[:, None] < group_out[None, :]
    if mask_type == "B":
        allowed |= group_in[:, None] == group_out[None, :]
    mask[-1, centre_col] = allowed.astype(np.float32)
    return mask


def pointwise_conv(x, kernel, bias=None) -> tf.Tensor:
    """A 1x1 convolution plus bias, x [B, H, W, cin] -> [B, H, W, cout], whose gradients
    are matmuls over the flattened pixels.

    The forward pass is TensorFlow's conv (+ BiasAdd, which oneDNN fuses). Its gradient
    kernels were the slow part: for pytorch-generative's PixelCNN (16/32 channels, batch
    64, AVX-512 VM) oneDNN's filter gradient took 1.2-1.4 ms of thread time per 1x1 conv per
    step inside the training step, a third of all op time. Here the filter gradient is one
    [cin, N] x [N, cout] matmul, the input gradient one [N, cout] x [cout, cin] matmul and
    the bias gradient BiasAddGrad (N = B*H*W). Training steps, paired blocks in one process
    against oneDNN's gradients: PixelCNN batch 64 1.15x, keras-io's network batch 128
    1.28x, Gated PixelCNN batch 16 1.12x (benchmarks/results.md).
    """
    cin, cout = int(kernel.shape[-2]), int(kernel.shape[-1])

    @tf.custom_gradient
    def conv(x, kernel, *bias):  # bias: () or (bias,)
        y = tf.nn.conv2d(x, kernel, 1, "VALID")
        if bias:
            y = tf.nn.bias_add(y, bias[0])

        def grad(dy):
            flat_dy = tf.reshape(dy, [-1, cout])
            matrix = tf.reshape(kernel, [cin, cout])
            dx = tf.reshape(tf.matmul(flat_dy, matrix, transpose_b=True), tf.shape(x))
            dw = tf.matmul(tf.reshape(x, [-1, cin]), flat_dy, transpose_a=True)
            db = [tf.raw_ops.BiasAddGrad(out_backprop=dy)] if bias else []
            return (dx, tf.reshape(dw, tf.shape(kernel)), *db)

        return y, grad

    return conv(x, kernel, *([] if bias is None else [tf.convert_to_tensor(bias)]))


class MaskedConv2D(keras.layers.Layer):
    """A stride-1 convolution whose output at (i, j) sees only inputs that precede it.

    Input float32 [batch, height, width, cin] -> [batch, height, width, filters]; height
    and width are preserved (zero padding). `kernel_size` entries must be odd. See the
    module docstring for mask types and colour groups; cin and filters must be multiples
    of color_groups.
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        mask_type: str = "B",
        color_groups: int = 1,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        kh, kw = _pair(kernel_size)
        check(kh % 2 == 1 and kw % 2 == 1, f"kernel_size={kernel_size!r} must be odd")
        check_choice("mask_type", mask_type, MASK_TYPES)
        check(
            mask_type != "V" or color_groups == 1,
            f"mask_type='V' sees whole rows; color_groups={color_groups} must be 1",
        )
        self.filters = filters
        self.kernel_size = (kh, kw)
        self.mask_type = mask_type
        self.color_groups = color_groups
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # Cropped kernel geometry: kh//2 rows above plus the centre row; a single-row
        # A/B kernel also drops the columns right of the centre.
        self.kernel_rows = kh // 2 + 1
        self.kernel_cols = kw if (kh > 1 or mask_type == "V") else kw // 2 + 1
        self.left = kw // 2
        self.right = self.kernel_cols - 1 - self.left
        # Rows of the input fully known when output row i starts: above i, and i for "V".
        self.rows_before = self.kernel_rows if mask_type == "V" else self.kernel_rows - 1

    def build(self, input_shape):
        cin = int(input_shape[-1])
        g = self.color_groups
        check(
            cin % g == 0 and self.filters % g == 0,
            f"input channels {cin} and filters {self.filters} must be multiples of "
            f"color_groups={g}",
        )
        shape = (self.kernel_rows, self.kernel_cols, cin, self.filters)
        self.kernel = self.add_weight(
            name="kernel", shape=shape, initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
            if self.use_bias
            else None
        )
        mask = causal_mask(*shape, self.mask_type, g, centre_col=self.left)
        self._mask = None if mask.all() else mask  # built once; None: nothing to mask
        self.input_channels = cin
        # Zero padding (rows above, columns either side); None when the conv needs none.
        pads = ((0, 0), (self.kernel_rows - 1, 0), (self.left, self.right), (0, 0))
        self._pads = pads if any(any(pair) for pair in pads) else None

    def masked_kernel(self) -> tf.Tensor:
        """float32 [kernel_rows, kernel_cols, cin, filters]: the kernel times its mask."""
        kernel = tf.convert_to_tensor(self.kernel)
        return kernel if self._mask is None else kernel * self._mask

    def call(self, x):
        return self.convolve(x, self.masked_kernel(), self.bias)

    def convolve(self, x, kernel, bias) -> tf.Tensor:
        """This layer's convolution of x with `kernel` (its geometry, any output width) plus
        `bias` (or None); `call` passes its own masked kernel and bias."""
        precision = current()
        if self.kernel_size == (1, 1) and precision == "float32":
            return pointwise_conv(x, kernel, bias)
        if precision != "float32":  # see conv_precision
            in_dtype = x.dtype
            x, kernel = tf.cast(x, precision), tf.cast(kernel, precision)
        # With oneDNN on (TF 2.21), only SAME/VALID convolutions get oneDNN's backward kernels
        # (an explicit padding list sends both gradients to Eigen's) and its bf16 kernels at
        # all (Eigen's bf16 conv: 14 against 667 GFLOP/s for the Gated PixelCNN's 2x3
        # 128 -> 256 conv). So a padded conv pads with its own op and convolves VALID when it
        # has fewer than WIDE_FILTERS filters (pytorch-generative's PixelCNN, 16/32 channels:
        # training 176 -> 227 img/s at batch 64, interleaved in one process) or runs in bf16;
        # a wide float32 one keeps the list, as oneDNN's filter gradient was the slower there
        # (Gated PixelCNN, 128/256 channels: 6.7 vs 6.1 img/s at batch 16).
        pad_first = self._pads is not None and (
            self.filters < WIDE_FILTERS or precision != "float32"
        )
        if pad_first:
            x = tf.pad(x, self._pads)
        padding = "VALID" if pad_first or self._pads is None else self._pads
        out = tf.nn.conv2d(x, kernel, strides=1, padding=padding)
        if precision != "float32":
            out = tf.cast(out, in_dtype)
        # BiasAdd, not a broadcast add: grappler fuses it into the conv and its gradient
        # is BiasAddGrad, not a generic reduction (PixelCNN training 1.3x faster, batch 64,
        # measured under load); in float32 after a bf16 conv
        return out if bias is None else tf.nn.bias_add(out, bias)

    # -- cached sampling -----------------------------------------------------------------

    def from_rows(self, rows) -> tf.Tensor:
        """rows float32 [B, rows_before, W, cin] (input rows i-rows_before .. ) -> [B, W, F].

        The output row i's part from rows known at its start, plus the bias.
        """
        if self.rows_before == 0:
            shape = tf.concat([tf.shape(rows)[:1], tf.shape(rows)[2:3], [self.filters]], 0)
            out = tf.zeros(shape, rows.dtype)
        else:
            kernel = self.masked_kernel()[: self.rows_before]
            out = tf.nn.conv2d(
                rows, kernel, 1, padding=[[0, 0], [0, 0], [self.left, self.right], [0, 0]]
            )[:, 0]
        return out if self.bias is None else out + self.bias

    def column_matrix(self) -> tf.Tensor:
        """float32 [(kw//2 + 1) * cin, F]: the current row's taps, for `from_columns`."""
        return tf.reshape(self.masked_kernel()[-1, : self.left + 1], [-1, self.filters])

    def from_columns(self, window, matrix) -> tf.Tensor:
        """window float32 [B, kw//2 + 1, cin] (row i, columns j-kw//2 .. j) -> [B, F].

        `matrix` is `column_matrix()`, computed once outside the sampling loop. No bias.
        """
        return tf.matmul(tf.reshape(window, [tf.shape(window)[0], -1]), matrix)

    def step_matrix(self) -> tf.Tensor:
        """float32 [cin, (left + 1) * F] for `step`: the centre tap (pixel j itself), then
        the taps through which pixel j reaches pixels j+1 .. j+left of its row."""
        taps = self.masked_kernel()[-1]  # [cols, cin, F]: tap t at column offset t - left
        order = [self.left] + [self.left - m for m in range(1, self.left + 1)]
        return tf.concat([taps[t] for t in order], axis=1)

    def step(self, matrix, queue, x):
        """One pixel of the current row's part with partial sums (Ramachandran et al. 2017).

        x [B, cin]: the input at (i, j); queue [B, left * F]: what the inputs at columns
        j-left .. j-1 contribute to pixels j .. j+left-1 (pixel j's block first; zeros
        when a row starts); matrix: `step_matrix()`, read once outside the loop.
        Returns (the current row's part of the output at (i, j) [B, F], no bias; the
        queue for pixel j + 1). One matmul per pixel, whatever the kernel width.
        """
        f = self.filters
        out = tf.matmul(x, matrix)
        if self.left == 0:
            return out, queue
        centre, ahead = tf.split(out, [f, self.left * f], axis=1)
        if self.left == 1:
            return centre + queue, ahead
        now, later = tf.split(queue, [f, (self.left - 1) * f], axis=1)
        return centre + now, tf.pad(later, [[0, 0], [0, f]]) + ahead

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            mask_type=self.mask_type,
            color_groups=self.color_groups,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def pointwise_group(x, convs) -> list[tf.Tensor]:
    """Several 1x1 MaskedConv2Ds of the same input x as one convolution over their
    concatenated masked kernels and biases, split back: [conv(x) for conv in convs] up to
    float rounding. One wider matmul instead of several, and x is read (and, in bf16, cast)
    once: the Gated PixelCNN's residual and skip 1x1s of the gated units."""
    check(all(c.kernel_size == (1, 1) for c in convs), "pointwise_group takes 1x1 convs only")
    for c in convs:
        if not c.built:  # in the order separate calls would build them (same initial weights)
            c.build(x.shape)
    kernel = tf.concat([c.masked_kernel() for c in convs], axis=-1)
    biases = [c.bias if c.bias is not None else tf.zeros([c.filters]) for c in convs]
    bias = None if all(c.bias is None for c in convs) else tf.concat(biases, axis=0)
    out = convs[0].convolve(x, kernel, bias)
    return tf.split(out, [c.filters for c in convs], axis=-1)


def shift_down(x) -> tf.Tensor:
    """x [B, H, W, C] moved down one row: row 0 zeros, the last row dropped.

    As Slice then Pad, whose gradients are Pad and Slice: `tf.pad(x, ...)[:, :-1]` takes
    StridedSliceGrad, which cost 105 ms of thread time per training step of
    pytorch-generative's Gated PixelCNN (bf16, batch 16), 9% of the step's op time."""
    rows = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
    kept = tf.slice(x, [0, 0, 0, 0], [-1, rows - 1, -1, -1])
    return tf.pad(kept, [[0, 0], [1, 0], [0, 0], [0, 0]])


def gate(features, groups: int = 1) -> tf.Tensor:
    """Gated unit tanh(a) * sigmoid(b): [..., 2c] -> [..., c], per colour group.

    Each of the `groups` contiguous blocks of 2c/groups channels holds its own (a, b)
    halves, so output group g depends only on input group g (colour order is kept).
    """
    if groups == 1:
        a, b = tf.split(features, 2, axis=-1)
        return tf.tanh(a) * tf.sigmoid(b)
    shape = tf.shape(features)
    c = features.shape[-1] // 2
    split = tf.reshape(features, tf.concat([shape[:-1], [groups, 2, c // groups]], 0))
    out = tf.tanh(split[..., 0, :]) * tf.sigmoid(split[..., 1, :])
    return tf.reshape(out, tf.concat([shape[:-1], [c]], 0))


@tf.custom_gradient
def unfused_relu(x):
    """ReLU as max(x, 0), which grappler's remapper does not fuse into a preceding conv,
    with ReLU's own gradient kernel (ReluGrad): Maximum's generic gradient (a comparison
    and a select per element) made PixelCNN training slower (pytorch-generative's network,
    batch 64, interleaved in one process: 248.8 vs 263.0 img/s)."""
    y = tf.maximum(x, 0.0)
    return y, lambda dy: tf.raw_ops.ReluGrad(gradients=dy, features=y)


def _matrix(conv: MaskedConv2D) -> tuple[tf.Tensor, tf.Tensor | None]:
    """(column_matrix, bias) of a layer as plain tensors, read once before a sampling loop."""
    bias = None if conv.bias is None else tf.convert_to_tensor(conv.bias)
    return conv.column_matrix(), bias


def _dense(x, weights):
    matrix, bias = weights
    out = tf.matmul(x, matrix)
    return out if bias is None else out + bias


class ResidualBlock(keras.layers.Layer):
    """PixelCNN residual block (van den Oord et al. 2016a, Fig. 5), with an optional label.

    [B, H, W, 2c] -> ReLU -> 1x1 -> conv_inputs (default c) -> ReLU -> kxk mask B (+ label
    bias) -> c -> ReLU -> 1x1 -> 2c (-> ReLU with `output_relu`, keras-io's example), added
    to the input. Every conv keeps the colour groups. With `output_relu` the stream is a
    sum of ReLU outputs (the caller ReLUs what enters the first block), so the leading
    ReLU, an identity on it, is skipped.
    """

    def __init__(
        self,
        channels,
        kernel_size=3,
        color_groups=1,
        num_classes=0,
        conv_inputs=None,
        output_relu=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        g = color_groups
        self.conv_inputs = conv_inputs or channels
        self.output_relu = output_relu
        self.reduce = MaskedConv2D(self.conv_inputs, 1, "B", g, name="reduce")
        self.conv = MaskedConv2D(channels, kernel_size, "B", g, name="conv")
        self.expand = MaskedConv2D(2 * channels, 1, "B", g, name="expand")
        self.embed = keras.layers.Embedding(num_classes, channels) if num_classes else None

    def _input(self, x):
        # Not tf.nn.relu: with oneDNN on, grappler's remapper fuses the previous block's
        # expand conv, bias, residual add and a ReLU here into one op and drops the add,
        # which the next residual still reads (its Conv + BiasAdd + Add + activation match
        # does not check the add's other consumers, TF 2.21); the whole pass then fails
        # ("remapper failed: ... fanout ... exist for missing node .../add") and none of its
        # fusions apply. `unfused_relu` is max(x, 0), which it does not match.
        return x if self.output_relu else unfused_relu(x)

    def _input_no_grad(self, x):
        # The cached sampler's `_input`: no gradient there, so plain max(x, 0), without the
        # two ops per call (Identity, IdentityN) tf.custom_gradient adds to every pixel step.
        return x if self.output_relu else tf.maximum(x, 0.0)

    def _output(self, out):
        return tf.nn.relu(out) if self.output_relu else out

    def call(self, x, label=None):
        u = tf.nn.relu(self.reduce(self._input(x)))
        t = self.conv(u)
        if self.embed is not None:
            t += self.embed(label)[:, None, None]
        return x + self._output(self.expand(tf.nn.relu(t)))

    # -- cached sampling: the caller keeps, per block, the last `conv.rows_before` rows of
    # the conv input u (a ring [B, R, W, conv_inputs]) and the conv's queue of partial sums.

    def step_weights(self) -> tuple:
        return _matrix(self.reduce), self.conv.step_matrix(), _matrix(self.expand)

    def row_context(self, rows, label_bias=None):
        """rows [B, R, W, conv_inputs] of u above row i -> [B, W, c]: the conv's row part
        (+ label)."""
        out = self.conv.from_rows(rows)
        return out if label_bias is None else out + label_bias[:, None]

    def at_pixel(self, weights, context, queue, x):
        """x [B, 2c] at (i, j); context [B, c]; queue [B, left * c] of the conv.

        Returns (output [B, 2c], u [B, conv_inputs] the conv input at (i, j), the next queue).
        """
        reduce, conv, expand = weights
        u = tf.nn.relu(_dense(self._input_no_grad(x), reduce))
        t, queue = self.conv.step(conv, queue, u)
        return x + self._output(_dense(tf.nn.relu(t + context), expand)), u, queue


class GatedBlock(keras.layers.Layer):
    """One layer of the Gated PixelCNN (van den Oord et al. 2016b, Fig. 2), no blind spot.

    Vertical stack v: a kxk mask-V conv over rows <= i of v (v at row i depends only on
    image rows < i), gated. Horizontal stack h: a 1xk mask-A (first layer) or mask-B conv
    over row i up to column j, plus a 1x1 link from the vertical features, gated per
    colour group; a 1x1 to the skip output and a 1x1 residual (no residual in the first
    layer, whose input is the image; none at all in the last layer, `last=True`, whose
    horizontal output would feed nothing). With classes, a label embedding biases both
    gates.
    Shapes: v [B, H, W, c_v], h [B, H, W, c_h] -> v [B, H, W, c], h [B, H, W, c],
    skip [B, H, W, skip_channels].
    """

    def __init__(
        self,
        channels,
        skip_channels,
        kernel_size=3,
        color_groups=1,
        num_classes=0,
        first=False,
        last=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        c, g = channels, color_groups
        self.channels, self.groups, self.first = c, g, first
        self.v_conv = MaskedConv2D(2 * c, kernel_size, "V", name="v_conv")
        self.h_conv = MaskedConv2D(2 * c, (1, kernel_size), "A" if first else "B", g, name="h_conv")
        self.link = MaskedConv2D(2 * c, 1, "V", use_bias=False, name="link")
        self.skip = MaskedConv2D(skip_channels, 1, "B", g, name="skip")
        # The last layer's horizontal output would feed nothing: only its skip is built.
        self.res = None if last else MaskedConv2D(c, 1, "B", g, name="res")
        self.embed = keras.layers.Embedding(num_classes, 4 * c) if num_classes else None

    def label_bias(self, label):
        """int32 [B] -> (vertical, horizontal) gate biases, each [B, 2c]; (0, 0) without."""
        if self.embed is None or label is None:
            return 0.0, 0.0
        e = self.embed(label)
        return e[:, : 2 * self.channels], e[:, 2 * self.channels :]

    def call(self, v, h, label=None):
        bias_v, bias_h = self.label_bias(label)
        if label is not None and self.embed is not None:
            bias_v, bias_h = bias_v[:, None, None], bias_h[:, None, None]
        v_features = self.v_conv(v) + bias_v
        h_features = self.h_conv(h) + self.link(v_features) + bias_h
        g = gate(h_features, self.groups)
        if self.res is None:
            return gate(v_features), None, self.skip(g)
        res, skip = pointwise_group(g, [self.res, self.skip])
        return gate(v_features), res if self.first else h + res, skip

    # -- cached sampling: the whole vertical stack of row i is computed when row i starts
    # (it sees rows < i only); per pixel only the horizontal stack runs. The skip 1x1s
    # are left to the caller, which applies all layers' at once.

    def step_weights(self) -> tuple:
        res = None if self.res is None else _matrix(self.res)
        conv = self.h_conv.column_matrix() if self.first else self.h_conv.step_matrix()
        return conv, res

    def row_context(self, v_rows, bias_v=0.0, bias_h=0.0):
        """v_rows [B, k//2 + 1, W, c_v] (v input rows i-k//2 .. i) -> (v row i [B, W, c],
        the horizontal gate's row part [B, W, 2c]: link + bias + label)."""
        v_features = self.v_conv.from_rows(v_rows) + _row(bias_v)
        link = self.link.from_rows(v_features[:, None]) + self.h_conv.bias + _row(bias_h)
        return gate(v_features), link

    def first_at_pixel(self, weights, context, window):
        """First layer: window [B, k//2 + 1, C] image row i, columns j-k//2 .. j;
        context [B, 2c] -> (h_out [B, c], gated units g [B, c] for the skip)."""
        conv, res = weights
        g = gate(self.h_conv.from_columns(window, conv) + context, self.groups)
        return None if res is None else _dense(g, res), g

    def at_pixel(self, weights, context, queue, h):
        """h [B, c_h] at (i, j); context [B, 2c]; queue [B, left * 2c] of the horizontal
        conv -> (h_out [B, c] or None in the last layer, g [B, c], the next queue)."""
        conv, res = weights
        pre, queue = self.h_conv.step(conv, queue, h)
        g = gate(pre + context, self.groups)
        return None if res is None else h + _dense(g, res), g, queue


def _row(bias):
    """A per-example bias [B, F] broadcast over a row [B, W, F] (or the scalar 0)."""
    return bias if isinstance(bias, float) else bias[:, None]


class SplitGatedBlock(keras.layers.Layer):
    """A Gated PixelCNN layer with split vertical convolutions (pytorch-generative's
    GatedPixelCNNLayer, after van den Oord et al. 2016b and Reed et al. 2017).

    Vertical stack: u = 1xk conv of v (row i only); pre = (k//2 + 1)x1 conv of u over the
    rows above i; the horizontal stack gets `link(pre)` (a 1x1), so it sees rows < i;
    the vertical output is gate(pre + 1x1(v)), which at row i also sees row i and so
    feeds the next layer's vertical stack only. Horizontal stack: a 1 x (k//2 + 1) conv
    ending at column j (mask B), or, in the first layer, at column j - 1 (mask A, the
    kernel reaching k//2 + 1 columns to the left); gated, then a 1x1 to the skip output
    and a 1x1 residual (not added in the first layer; not built in the last, whose
    horizontal and vertical outputs feed nothing).
    Shapes: v [B, H, W, c_v], h [B, H, W, c_h] -> v [B, H, W, c] (None in the last layer),
    h [B, H, W, c] (None in the last layer), skip [B, H, W, skip_channels].
    """

    def __init__(
        self,
        channels,
        skip_channels,
        kernel_size=3,
        color_groups=1,
        num_classes=0,
        first=False,
        last=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        c, g, k = channels, color_groups, kernel_size
        self.channels, self.groups, self.first = c, g, first
        self.v_row = MaskedConv2D(c, (1, k), "V", name="v_row")
        self.v_col = MaskedConv2D(2 * c, (k, 1), "V", name="v_col")  # on u shifted down
        self.v_self = None if last else MaskedConv2D(2 * c, 1, "V", name="v_self")
        self.link = MaskedConv2D(2 * c, 1, "V", name="link")
        h_kernel, h_mask = ((1, k + 2), "A") if first else ((1, k), "B")
        self.h_conv = MaskedConv2D(2 * c, h_kernel, h_mask, g, name="h_conv")
        self.skip = MaskedConv2D(skip_channels, 1, "B", g, name="skip")
        self.res = None if last else MaskedConv2D(c, 1, "B", g, name="res")
        self.embed = keras.layers.Embedding(num_classes, 4 * c) if num_classes else None

    label_bias = GatedBlock.label_bias

    def call(self, v, h, label=None):
        bias_v, bias_h = self.label_bias(label)
        if label is not None and self.embed is not None:
            bias_v, bias_h = bias_v[:, None, None], bias_h[:, None, None]
        pre = self.v_col(shift_down(self.v_row(v)))
        g = gate(self.h_conv(h) + self.link(pre) + bias_h, self.groups)
        if self.res is None:
            return None, None, self.skip(g)
        res, skip = pointwise_group(g, [self.res, self.skip])
        h_out = res if self.first else h + res
        return gate(pre + self.v_self(v) + bias_v), h_out, skip

    # -- cached sampling: when row i starts, `pre` of row i comes from the ring of the
    # last k//2 + 1 rows of u; when row i ends, its vertical output (which needs all of
    # row i) is computed for the next layer and row i of u joins the ring. Per pixel only
    # the horizontal stack runs (`first_at_pixel` / `at_pixel`, as in GatedBlock).

    step_weights = GatedBlock.step_weights
    first_at_pixel = GatedBlock.first_at_pixel
    at_pixel = GatedBlock.at_pixel

    def row_context(self, u_rows, bias_h=0.0):
        """u_rows [B, k//2 + 1, W, c] (u rows i-k//2-1 .. i-1) -> (pre [B, W, 2c], the
        horizontal gate's row part [B, W, 2c]: link + h_conv bias + label)."""
        pre = self.v_col.from_rows(u_rows)
        link = self.link.from_rows(pre[:, None]) + self.h_conv.bias + _row(bias_h)
        return pre, link

    def row_end(self, v_row, pre, bias_v=0.0):
        """v_row [B, W, c_v] (the vertical input's row i), pre [B, W, 2c] of row i ->
        (u row i [B, W, c], the vertical output row i [B, W, c]; None in the last layer)."""
        u = self.v_row.from_rows(v_row[:, None])
        if self.v_self is None:
            return u, None
        return u, gate(pre + self.v_self.from_rows(v_row[:, None]) + _row(bias_v))
