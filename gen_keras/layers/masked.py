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
bias) plus `from_columns` (the current row's taps at columns j - kw//2 .. j; one small
matmul per pixel). Their sum equals `call` up to float rounding.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from gen_keras.config import check, check_choice

MASK_TYPES = ("A", "B", "V")


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

    def masked_kernel(self) -> tf.Tensor:
        """float32 [kernel_rows, kernel_cols, cin, filters]: the kernel times its mask."""
        kernel = tf.convert_to_tensor(self.kernel)
        return kernel if self._mask is None else kernel * self._mask

    def call(self, x):
        out = tf.nn.conv2d(
            x,
            self.masked_kernel(),
            strides=1,
            padding=[[0, 0], [self.kernel_rows - 1, 0], [self.left, self.right], [0, 0]],
        )
        return out if self.bias is None else out + self.bias

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
