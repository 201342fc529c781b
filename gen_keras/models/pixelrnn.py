"""PixelRNN: Row LSTM and Diagonal BiLSTM (van den Oord, Kalchbrenner & Kavukcuoglu 2016).

    p(x) = prod_{i=1}^{H W} prod_{c=1}^{C} p(x_{i,c} | x_{<i}, x_{i,<c})   (raster, then R G B)
    NLL(x) = -log p(x) in nats per image;  bits/dim = NLL / (H W C ln 2)

Network (section 3 of the paper): a 7 x 7 mask-A convolution to 2h channels; `layers`
recurrent layers (Row LSTM or Diagonal BiLSTM, h units, `gen_keras.layers.recurrent`),
each followed by a 1 x 1 mask-B convolution back to 2h channels and added to its input
(residual connections); ReLU, 1 x 1 mask-B convolution to `output_hidden`, ReLU, 1 x 1
mask-B convolution to the head's parameters (Bernoulli logits for binary data, 256-way
logits per sub-pixel for 8-bit data). Conditional models add a learned per-class bias to
every recurrent layer's gate pre-activations.

One addition to the paper: the first Diagonal BiLSTM layer's right-to-left direction also
reads the pixel values at its own position (its output is used one row down, so this is
causal). Without it the last pixel of row i-1 reaches features only through the mask-A
convolution in row i at columns >= W-4, and pixels (i, j < W-4) never see it, at any
depth; with it the receptive field is exactly the past (tests/test_pixelrnn.py).

Sampling is raster order in a tf.while_loop. Both architectures sample with cached
recurrent state: a pixel only evaluates its own position in every layer, reading the
states of the row above (and, for the Diagonal BiLSTM, of the pixel to the left); at the
end of a row the Row LSTM keeps the row's (c, h) and the Diagonal BiLSTM runs its
right-to-left direction over the finished row. The reference (`gen_keras.sampling`) runs
the whole network per sub-pixel instead; both give the same samples for the same seeds.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from gen_keras.config import check, check_fields, check_positive, hparam
from gen_keras.distributions import make_head, resolve_likelihood
from gen_keras.layers.masked import MaskedConv2D
from gen_keras.layers.recurrent import GATES, DiagonalBiLSTM, RowLSTM, lstm_cell
from gen_keras.models.autoregressive import AutoregressiveModel

ARCHS = ("row_lstm", "diagonal_bilstm")
FIRST_KERNEL = 7  # the 7 x 7 mask-A input convolution


@dataclasses.dataclass(frozen=True)
class Config:
    """PixelRNN architecture."""

    arch: str = hparam("row_lstm", "Recurrent layer.", ARCHS)
    layers: int = hparam(
        4, "Recurrent layers, with residual connections (the paper's MNIST models: 7)."
    )
    hidden: int = hparam(16, "h: LSTM units per layer; the residual stream has 2h channels.")
    kernel_width: int = hparam(3, "k of the Row LSTM's 1 x k input-to-state convolution (odd).")
    output_hidden: int = hparam(64, "Channels of the ReLU 1 x 1 layer before the head.")
    likelihood: str = hparam(
        "auto",
        "Pixel likelihood (auto: bernoulli for binary data, categorical for uint8).",
        ("auto", "bernoulli", "categorical"),
    )
    conditional: bool = hparam(False, "Condition every recurrent layer on the class label.")

    def __post_init__(self):
        check_fields(self)
        for name in ("layers", "hidden", "kernel_width", "output_hidden"):
            check_positive(name, getattr(self, name))
        check(self.kernel_width % 2 == 1, f"kernel_width={self.kernel_width} must be odd")


def default(arch: str = "row_lstm") -> Config:
    """The trainer's default: 4 layers, h = 16 (an MNIST epoch in minutes on a CPU)."""
    return Config(arch=arch)


def small(arch: str = "row_lstm") -> Config:
    """A seconds-to-train variant for tests."""
    return Config(arch=arch, layers=2, hidden=6, output_hidden=12)


def reproduce(arch: str = "diagonal_bilstm") -> Config:
    """The paper's MNIST model: 7 recurrent layers, h = 16 (its Table 4 figures)."""
    return Config(arch=arch, layers=7, hidden=16, output_hidden=64)


def _put(buffer, index, value):
    """buffer [B, N, ...] with buffer[:, index] replaced by value [B, ...]."""
    hot = tf.equal(tf.range(buffer.shape[1]), index)
    hot = tf.reshape(hot, [1, -1] + [1] * (len(buffer.shape) - 2))
    return tf.where(hot, tf.expand_dims(value, 1), buffer)


def _cols(buffer, start, size: int):
    """buffer[:, start:start + size] with a static size (XLA-friendly dynamic slice)."""
    begin = tf.concat([[0, start], tf.zeros([len(buffer.shape) - 2], tf.int32)], 0)
    return tf.slice(buffer, begin, [-1, size] + [-1] * (len(buffer.shape) - 2))


def _pointwise(layer: MaskedConv2D, x, matrix):
    """A one-row mask-B conv's output at the last column of x [B, cols, cin] -> [B, F]."""
    return layer.from_columns(x, matrix) + layer.bias


@keras.saving.register_keras_serializable(package="gen_keras")
class PixelRNN(AutoregressiveModel):
    """An autoregressive image model: causal LSTM stack -> per-sub-pixel likelihood head."""

    family = "pixelrnn"
    config_class = Config

    def __init__(self, spec, config: Config, **kwargs):
        super().__init__(spec, config, **kwargs)
        spec, config = self.spec, self.config
        c = spec.shape[-1]
        name = resolve_likelihood(config.likelihood, spec)
        check(
            config.hidden % c == 0 and config.output_hidden % c == 0,
            f"hidden={config.hidden} and output_hidden={config.output_hidden} must be "
            f"multiples of the {c} colour channels",
        )
        self.head = make_head(name)
        u = config.hidden
        self.input_conv = MaskedConv2D(2 * u, FIRST_KERNEL, "A", c, name="input_conv")
        if config.arch == "row_lstm":
            self.recurrent = [
                RowLSTM(u, config.kernel_width, c, name=f"row_lstm_{i}")
                for i in range(config.layers)
            ]
        else:
            self.recurrent = [
                DiagonalBiLSTM(u, c, reads_pixels=i == 0, name=f"diagonal_bilstm_{i}")
                for i in range(config.layers)
            ]
        self.residual = [
            MaskedConv2D(2 * u, 1, "B", c, name=f"residual_{i}") for i in range(config.layers)
        ]
        self.output_hidden = MaskedConv2D(config.output_hidden, 1, "B", c, name="output_hidden")
        self.output_params = MaskedConv2D(self.head.num_params(c), 1, "B", c, name="output")
        self.label_bias = (
            keras.layers.Embedding(
                spec.num_classes, config.layers * GATES * u, embeddings_initializer="zeros"
            )
            if config.conditional
            else None
        )

    # -- the network ---------------------------------------------------------------------

    def _scaled(self, x):
        """Model-space images -> network input of order 1 (8-bit: [-1, 1])."""
        return x if self.spec.binary else x / 127.5 - 1.0

    def _biases(self, label):
        """Per-layer gate biases [B, 4h] from the label, or Nones."""
        if self.label_bias is None or label is None:
            return [None] * self.config.layers
        return tf.split(self.label_bias(label), self.config.layers, axis=-1)

    def _head_params(self, features):
        """Residual stream [..., 2h] -> head parameters [..., P] (1 x 1 layers)."""
        hidden = tf.nn.relu(self.output_hidden(tf.nn.relu(features)))
        return self.output_params(hidden)

    def params(self, x, label=None):
        """x float32 [B, H, W, C] model space -> head params [B, H, W, P]; causal."""
        pixels = self._scaled(x)
        features = self.input_conv(pixels)
        for layer, (rnn, residual, bias) in enumerate(
            zip(self.recurrent, self.residual, self._biases(label), strict=True)
        ):
            extra = {"pixels": pixels} if layer == 0 and self.config.arch != "row_lstm" else {}
            features = features + residual(rnn(features, bias, **extra))
        return self._head_params(features)

    def stepper(self, label=None):
        return CachedStepper(self, label)


def build(config: Config, spec, learning_rate: float | None = None) -> PixelRNN:
    model = PixelRNN(spec, config)
    model.compile(learning_rate=learning_rate)
    return model


class CachedStepper:
    """A `gen_keras.sampling` stepper that reuses recurrent state (no row is recomputed).

    Per pixel (i, j) every layer is evaluated at (i, j) only. Row LSTM: the gates read the
    row above's (c, h) at columns j-1..j+1 and the layer's inputs at columns j-k//2..j of
    row i; after the row its (c, h) become the next row's context. Diagonal BiLSTM: the
    left-to-right direction reads h of (i-1, j) and (c, h) of (i, j-1); the right-to-left
    direction, which the output at row i reads one row up, runs over row i once the row is
    final (W steps per layer). The 7 x 7 input convolution's rows above i are computed
    once per row (`MaskedConv2D.from_rows`). Cost per pixel: O(layers) small matmuls,
    against a whole-image network pass for the reference sampler.
    """

    skip_known = False  # known pixels still advance the recurrent state

    def __init__(self, model: PixelRNN, label=None):
        self.model = model
        self.row_lstm = model.config.arch == "row_lstm"
        self.label = label
        self.u = model.config.hidden
        self.k_half = model.config.kernel_width // 2
        self.half = FIRST_KERNEL // 2
        self.first = model.input_conv.column_matrix()
        self.residual = [r.column_matrix() for r in model.residual]
        self.out_hidden = model.output_hidden.column_matrix()
        self.out_params = model.output_params.column_matrix()
        # One matmul per layer and pixel: [input window, state context] @ [input; state].
        if self.row_lstm:
            self.gates = [
                tf.concat([r.input_to_state.column_matrix(), r.state_kernel], 0)
                for r in model.recurrent
            ]
            self.gate_bias = [r.input_to_state.bias for r in model.recurrent]
        else:
            self.gates = [
                tf.concat([r.forward_input.column_matrix(), r.state_kernels[0]], 0)
                for r in model.recurrent
            ]
            self.gate_bias = [r.forward_input.bias for r in model.recurrent]

    def _zeros(self, batch, cols, channels):
        return tf.zeros([batch, cols, channels])

    def _row_buffers(self, batch):
        """Per layer: (inputs of row i, c of row i, h of row i); Diagonal: column j at j+1."""
        _, width, _ = self.model.spec.shape
        u = self.u
        if self.row_lstm:
            shapes = (width + self.k_half, 2 * u), (width, u), (width, u)
        else:
            shapes = (width, 2 * u), (width + 1, u), (width + 1, u)
        return [
            tuple(self._zeros(batch, cols, ch) for cols, ch in shapes)
            for _ in range(self.model.config.layers)
        ]

    def init(self, x):
        batch = tf.shape(x)[0]
        _, width, _ = self.model.spec.shape
        u = self.u
        biases = [
            tf.zeros([batch, GATES * u]) if b is None else b for b in self.model._biases(self.label)
        ]
        # Row LSTM: (c, h padded by one column each side) of row i-1;
        # Diagonal BiLSTM: (left-to-right h, right-to-left h) of row i-1.
        above_cols = width if not self.row_lstm else width + 2
        above = [
            (self._zeros(batch, width, u), self._zeros(batch, above_cols, u))
            for _ in range(self.model.config.layers)
        ]
        return {
            "biases": biases,
            "above": above,
            "rows": self._zeros(batch, width, 2 * u),  # input conv from the rows above i
            "buffers": self._row_buffers(batch),
        }

    def start_row(self, state, x, i):
        model = self.model
        padded = tf.pad(model._scaled(x), [[0, 0], [self.half, 0], [0, 0], [0, 0]])
        rows = model.input_conv.from_rows(tf.slice(padded, [0, i, 0, 0], [-1, self.half, -1, -1]))
        return dict(state, rows=rows, buffers=self._row_buffers(tf.shape(x)[0]))

    def pixel(self, state, x, i, j):
        model, u = self.model, self.u
        batch = tf.shape(x)[0]
        row = tf.pad(model._scaled(tf.gather(x, i, axis=1)), [[0, 0], [self.half, 0], [0, 0]])
        features = tf.gather(state["rows"], j, axis=1) + model.input_conv.from_columns(
            _cols(row, j, self.half + 1), self.first
        )
        buffers = []
        for layer, rnn in enumerate(model.recurrent):
            inputs, cur_c, cur_h = state["buffers"][layer]
            above_a, above_b = state["above"][layer]
            bias = state["biases"][layer] + self.gate_bias[layer]
            if self.row_lstm:
                inputs = _put(inputs, j + self.k_half, features)
                window = tf.reshape(_cols(inputs, j, self.k_half + 1), [batch, -1])
                context = tf.reshape(_cols(above_b, j, 3), [batch, 3 * u])  # h at j-1, j, j+1
                pre = tf.matmul(tf.concat([window, context], 1), self.gates[layer]) + bias
                c, h = lstm_cell(pre, tf.gather(above_a, j, axis=1), rnn.groups)
                buffers.append((inputs, _put(cur_c, j, c), _put(cur_h, j, h)))
                out = h
            else:
                inputs = _put(inputs, j, features)
                # (upper, left) neighbours, the order of the skewed 2 x 1 kernel
                up, left = tf.gather(above_a, j, axis=1), tf.gather(cur_h, j, axis=1)
                pre = tf.matmul(tf.concat([features, up, left], 1), self.gates[layer]) + bias
                c, h = lstm_cell(pre, tf.gather(cur_c, j, axis=1), rnn.groups)
                buffers.append((inputs, _put(cur_c, j + 1, c), _put(cur_h, j + 1, h)))
                out = h + tf.gather(above_b, j, axis=1)  # right-to-left h of (i-1, j)
            features += _pointwise(model.residual[layer], out[:, None], self.residual[layer])
        hidden = _pointwise(model.output_hidden, tf.nn.relu(features)[:, None], self.out_hidden)
        params = _pointwise(model.output_params, tf.nn.relu(hidden)[:, None], self.out_params)
        return params, dict(state, buffers=buffers)

    def end_row(self, state, x, i):
        above = []
        for layer, rnn in enumerate(self.model.recurrent):
            inputs, cur_c, cur_h = state["buffers"][layer]
            if self.row_lstm:
                above.append((cur_c, tf.pad(cur_h, [[0, 0], [1, 1], [0, 0]])))
            else:
                back = self._right_to_left(
                    rnn, inputs, state["above"][layer][1], state["biases"][layer], x, i
                )
                above.append((cur_h[:, 1:], back))
        return dict(state, above=above)

    def _right_to_left(self, rnn, inputs, above, bias, x, i):
        """Right-to-left h of the finished row [B, W, u], from its inputs [B, W, 2u] and
        the row above's right-to-left h [B, W, u]: steps j = W-1 .. 0 read (i-1, j), (i, j+1).
        """
        pre = rnn.backward_input(inputs[:, None])[:, 0] + bias[:, None]
        if rnn.pixel_input is not None:
            pre += rnn.pixel_input(self.model._scaled(tf.gather(x, i, axis=1)))
        kernel = rnn.state_kernels[1]

        def step(state, elems):
            c, h = state
            p, up = elems
            return lstm_cell(p + tf.matmul(tf.concat([up, h], -1), kernel), c, rnn.groups)

        time_major = lambda t: tf.reverse(tf.transpose(t, [1, 0, 2]), [0])  # noqa: E731
        zeros = tf.zeros([tf.shape(inputs)[0], self.u])
        _, h = tf.scan(step, (time_major(pre), time_major(above)), (zeros, zeros))
        return tf.transpose(tf.reverse(h, [0]), [1, 0, 2])
