"""PixelCNN (van den Oord et al. 2016a) and Gated PixelCNN (van den Oord et al. 2016b).

    log p(x) = sum_i log p(x_i | x_<i)       (raster order; R -> G -> B within a pixel)
    NLL      = -log p(x) in nats per image;  bits/dim = NLL / (H * W * C * ln 2)

Every conditional comes from one pass of a masked convolutional network over the whole
image, so training is parallel and exact; sampling is sequential.

- `arch="pixelcnn"`: a 7x7 mask-A conv to 2h features, residual blocks of ReLU - 1x1 -
  3x3 mask B - 1x1 (2016a, Fig. 5), then ReLU - 1x1 - ReLU - 1x1 to the head.
- `arch="gated"`: vertical and horizontal stacks without blind spot, gated units
  tanh(W_f * x + V_f y) * sigmoid(W_g * x + V_g y), residual connections in the horizontal
  stack and skip connections summed into the output layers (2016b).
- Heads (`gen_keras.distributions`): Bernoulli for binary data, Categorical over 256
  values per sub-pixel, or the discretized logistic mixture of PixelCNN++ (Salimans et
  al. 2017), whose pixel channels are sampled jointly (the network then needs no colour
  masking: `color_groups = 1`).
- `conditional=True`: a class-label embedding bias in every block (gates for `gated`).

Sampling: `sample(..., cached=False)` is the reference raster loop of
`gen_keras.sampling` (the whole network per pixel); `cached=True` is the fast sampler of
Ramachandran et al. (2017) adapted to 2D masked convs: when row i starts, every layer's
contribution from rows above (and, for `gated`, the whole vertical stack of row i) is
computed for the full row at once; per pixel only a 1 x (k//2 + 1) window per layer runs,
on queues of each layer's last inputs in the row, and a finished row is pushed into each
layer's ring of the last k//2 rows. Both draw the same per-row noise through one loop, so
equal seeds give equal samples (up to float rounding of the network in the two orders of
summation, which flips a draw only when its noise lands within ~1e-6 of a threshold).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from gen_keras.config import check, check_fields, check_positive, hparam
from gen_keras.distributions import LIKELIHOODS, make_head, resolve_likelihood
from gen_keras.layers.masked import (
    GatedBlock,
    MaskedConv2D,
    ResidualBlock,
    SplitGatedBlock,
    shift_down,
)
from gen_keras.models.autoregressive import AutoregressiveModel

ARCHS = ("pixelcnn", "gated")
VERTICALS = ("square", "split")
ACTIVATIONS = ("pre", "post")


@dataclasses.dataclass(frozen=True)
class Config:
    """PixelCNN architecture and likelihood."""

    arch: str = hparam("gated", "PixelCNN (2016a) or Gated PixelCNN (2016b).", ARCHS)
    likelihood: str = hparam(
        "auto",
        "Pixel likelihood (auto: bernoulli for binary data, categorical for uint8).",
        LIKELIHOODS,
    )
    num_mixtures: int = hparam(5, "Components of the logistic_mixture likelihood.")
    hidden: int = hparam(16, "gated: channels per stack; pixelcnn: block inner width (2x outside).")
    layers: int = hparam(6, "Gated layers (the first included) or residual blocks.")
    kernel_size: int = hparam(3, "Block kernels, odd: kxk (gated: vertical kxk, horizontal 1xk).")
    first_kernel_size: int = hparam(7, "Kernel of the first, mask-A layer (odd).")
    output_hidden: int = hparam(32, "Channels of the 1x1 output layer (and of gated skips).")
    skip_channels: int = hparam(0, "Gated: channels of the skips (0: output_hidden).")
    vertical: str = hparam(
        "square",
        "Gated vertical stack: square = a kxk conv over the rows above (2016b); split = a 1xk "
        "conv, then a (k//2 + 1)x1 conv over the rows above plus a 1x1 from the same row "
        "(pytorch-generative's GatedPixelCNNLayer).",
        VERTICALS,
    )
    bottleneck: bool = hparam(
        True,
        "pixelcnn: the block's first 1x1 narrows 2*hidden to hidden before the kxk conv "
        "(2016a, Fig. 5); false keeps 2*hidden into it (keras-io's example).",
    )
    activations: str = hparam(
        "pre",
        "pixelcnn: pre = a ReLU before each block conv, a linear first layer and residual "
        "stream (2016a, pytorch-generative); post = a ReLU after every conv, the first "
        "layer's and the block output's included (keras-io's example).",
        ACTIVATIONS,
    )
    output_layers: int = hparam(1, "Hidden 1x1 layers of output_hidden channels before the head.")
    conditional: bool = hparam(False, "Class-label bias in every block.")

    def __post_init__(self):
        check_fields(self)
        check(self.skip_channels >= 0, f"skip_channels={self.skip_channels} must be >= 0")
        for name in ("num_mixtures", "hidden", "layers", "output_hidden", "output_layers"):
            check_positive(name, getattr(self, name))
        check(
            self.arch == "pixelcnn" or (self.bottleneck and self.activations == "pre"),
            f"bottleneck={self.bottleneck} and activations={self.activations!r} shape the "
            "residual blocks of arch='pixelcnn'; the gated net has none",
        )
        for name in ("kernel_size", "first_kernel_size"):
            value = getattr(self, name)
            check(value > 0 and value % 2 == 1, f"{name}={value} must be odd and > 0")


def small() -> Config:
    """A seconds-to-train variant for tests."""
    return Config(hidden=8, layers=2, output_hidden=16)


def reproduce(arch: str = "pixelcnn") -> Config:
    """pytorch-generative's MNIST configurations (its `reproduce()` functions), exactly.

    pixelcnn: a 7x7 mask-A conv to 32 channels, 15 residual blocks (32 -> 16 -> 3x3 mask B
    -> 32), a 1x1 head of 32 channels (81.45 nats there, dynamic binarization; the
    PixelRNN paper reports 81.30 static). Its 37,409 unmasked weights are the peer's; the
    peer adds each residual twice (`x + layer(x)` around a block that already returns
    `x + f(x)`), a bug not copied here. gated: its input layer (7x7) and 10 gated layers
    of 128 channels with split vertical convs, 128-channel skips and a 32-channel head
    (81.50 nats there); the peer's last layer also holds a vertical 1x1 and a horizontal
    residual whose outputs nothing reads, which are not built here.
    """
    if arch == "gated":
        return Config(
            arch="gated",
            hidden=128,
            layers=11,
            output_hidden=32,
            skip_channels=128,
            vertical="split",
        )
    return Config(arch="pixelcnn", hidden=16, layers=15, output_hidden=32)


def keras_io() -> Config:
    """The network of keras-io's PixelCNN example (examples/generative/pixelcnn.py): a 7x7
    mask-A conv to 128 channels, 5 residual blocks (ReLU, 1x1 128 -> 128, 3x3 mask B ->
    64, 1x1 -> 128, a ReLU after each conv), two 1x1 layers of 128 and a Bernoulli head:
    365,633 weights its masks keep (532,673 stored)."""
    return Config(
        arch="pixelcnn",
        hidden=64,
        layers=5,
        output_hidden=128,
        output_layers=2,
        bottleneck=False,
        activations="post",
    )


@keras.saving.register_keras_serializable(package="gen_keras")
class PixelCNN(AutoregressiveModel):
    """Masked conv net -> per-pixel head parameters [B, H, W, head.num_params(C)]."""

    family = "pixelcnn"
    config_class = Config

    def __init__(self, spec, config: Config, **kwargs):
        super().__init__(spec, config, **kwargs)
        spec, config = self.spec, self.config
        c = spec.shape[-1]
        name = resolve_likelihood(config.likelihood, spec)
        self.head = make_head(name, config.num_mixtures)
        groups = 1 if self.head.joint_channels else c
        self.groups = groups
        for field in ("hidden", "output_hidden", "skip_channels"):
            value = getattr(config, field)
            check(
                value % groups == 0,
                f"{field}={value} must be a multiple of the {groups} colour channels, which "
                f"the {name} head samples one by one (e.g. {field}={value + (-value) % groups}"
                ", or likelihood='logistic_mixture', which samples them jointly)",
            )
        classes = spec.num_classes if config.conditional else 0
        k, k0, hid = config.kernel_size, config.first_kernel_size, config.hidden
        if config.arch == "pixelcnn":
            self.first = MaskedConv2D(2 * hid, k0, "A", groups, name="first")
            post = config.activations == "post"
            self.blocks = [
                ResidualBlock(
                    hid,
                    k,
                    groups,
                    classes,
                    conv_inputs=hid if config.bottleneck else 2 * hid,
                    output_relu=post,
                    name=f"block_{i}",
                )
                for i in range(config.layers)
            ]
        else:
            block = GatedBlock if config.vertical == "square" else SplitGatedBlock
            self.blocks = [
                block(
                    hid,
                    config.skip_channels or config.output_hidden,
                    k0 if i == 0 else k,
                    groups,
                    classes,
                    first=i == 0,
                    last=i == config.layers - 1,
                    name=f"gated_{i}",
                )
                for i in range(config.layers)
            ]
        self.out_hidden = MaskedConv2D(config.output_hidden, 1, "B", groups, name="out_hidden")
        self.more_hidden = [  # output_layers > 1
            MaskedConv2D(config.output_hidden, 1, "B", groups, name=f"out_hidden_{i}")
            for i in range(1, config.output_layers)
        ]
        self.out_params = MaskedConv2D(self.head.num_params(c), 1, "B", groups, name="out")

    # -- the network ---------------------------------------------------------------------

    def scaled(self, x):
        """Model-space images -> network input in [-1, 1] (0 is reserved for padding)."""
        return x * 2.0 - 1.0 if self.spec.binary else x / 127.5 - 1.0

    def features(self, x, label=None):
        """x float32 [B, H, W, C] model space -> what the output layers read [B, H, W, F].

        pixelcnn: the residual stream (2 * hidden); gated: the sum of the skips
        (output_hidden). Between x and these there is no ReLU in the gated net and a
        linear path through the first layer in the residual one (activations='pre'), so
        a zero gradient here is structural (the receptive field), not a dead unit.
        """
        x = self.scaled(x)
        if self.config.arch == "pixelcnn":
            features = self.first(x)
            if self.config.activations == "post":
                features = tf.nn.relu(features)
            for block in self.blocks:
                features = block(features, label)
            return features
        if self.config.vertical == "split":
            v = x  # the block's own (k//2 + 1)x1 conv looks at the rows above only
        else:
            v = shift_down(x)  # rows < i only
        h, features = x, 0.0
        for block in self.blocks:
            v, h, skip = block(v, h, label)
            features += skip
        return features

    def params(self, x, label=None):
        """x float32 [B, H, W, C] model space -> params [B, H, W, head.num_params(C)]."""
        hidden = tf.nn.relu(self.out_hidden(tf.nn.relu(self.features(x, label))))
        for layer in self.more_hidden:
            hidden = tf.nn.relu(layer(hidden))
        return self.out_params(hidden)

    def stepper(self, label=None):
        """The cached sampler's stepper (see gen_keras.sampling) for this network."""
        if self.config.arch == "pixelcnn":
            return _PixelCNNStepper(self, label)
        if self.config.vertical == "split":
            return _SplitGatedStepper(self, label)
        return _GatedStepper(self, label)


def build(config: Config, spec, learning_rate: float | None = None) -> PixelCNN:
    model = PixelCNN(spec, config)
    model.compile(learning_rate=learning_rate)
    return model


# -- cached steppers (the protocol of gen_keras.sampling) ----------------------------------
# Per pixel the loop body runs a few small matmuls per layer, so on CPU in graph mode its
# cost is mostly the number of ops: contexts of all layers are one tensor (one gather per
# pixel), row convs keep queues of partial sums (one matmul per layer), and the gated
# skips are one matmul over all layers.


def _rows(x, i, n):
    """x[:, i : i + n] with a static size n (a dynamic slice would not compile with XLA)."""
    return tf.slice(x, [0, i, 0, 0], [-1, n, -1, -1])


def _window(model, x, i, j, left):
    """Model-space x [B, H, W, C] -> scaled row i at columns j-left .. j, [B, left + 1, C]."""
    row = tf.pad(model.scaled(tf.gather(x, i, axis=1)), [[0, 0], [left, 0], [0, 0]])
    return tf.slice(row, [0, j, 0], [-1, left + 1, -1])  # zero padding, as in call


def _weights(conv):
    return conv.column_matrix(), tf.convert_to_tensor(conv.bias)


class _Stepper:
    """What both architectures share: the output layers and the merged row contexts."""

    def __init__(self, model: PixelCNN):
        self.m = model
        self.width = model.spec.shape[1]
        self.hidden = [_weights(layer) for layer in (model.out_hidden, *model.more_hidden)]
        self.out = _weights(model.out_params)

    def _params(self, features):
        hidden = tf.nn.relu(features)
        for matrix, bias in self.hidden:
            hidden = tf.nn.relu(tf.matmul(hidden, matrix) + bias)
        matrix, bias = self.out
        return tf.matmul(hidden, matrix) + bias

    def _contexts(self, state, j):
        """Per-layer row contexts at column j, from the merged [W, B, sum] tensor."""
        return tf.split(tf.gather(state["context"], j), self.context_sizes, axis=1)

    @staticmethod
    def _merge(contexts):
        """[B, W, F_l] per layer -> [W, B, sum F_l]."""
        return tf.transpose(tf.concat(contexts, axis=2), [1, 0, 2])


class _PixelCNNStepper(_Stepper):
    """Cached PixelCNN: per block a ring of the kxk conv's input rows and a queue."""

    def __init__(self, model: PixelCNN, label):
        super().__init__(model)
        self.first = model.first
        self.first_matrix = model.first.column_matrix()
        self.weights = [block.step_weights() for block in model.blocks]
        self.label_bias = [
            None if b.embed is None or label is None else b.embed(label) for b in model.blocks
        ]
        self.context_sizes = [self.first.filters] + [b.conv.filters for b in model.blocks]

    def init(self, x):
        batch = tf.shape(x)[0]
        rings = [
            tf.zeros([batch, b.conv.rows_before, self.width, b.conv_inputs]) for b in self.m.blocks
        ]
        return {"rings": rings, **self._row_state(batch)}

    def _row_state(self, batch):
        return {
            "context": tf.zeros([self.width, batch, sum(self.context_sizes)]),
            "queues": [tf.zeros([batch, b.conv.left * b.conv.filters]) for b in self.m.blocks],
            "rows": [
                tf.TensorArray(tf.float32, size=self.width, element_shape=[None, b.conv_inputs])
                for b in self.m.blocks
            ],
        }

    def start_row(self, state, x, i):
        above = self.first.rows_before
        xs = tf.pad(self.m.scaled(x), [[0, 0], [above, 0], [0, 0], [0, 0]])
        contexts = [self.first.from_rows(_rows(xs, i, above))]
        for block, ring, bias in zip(self.m.blocks, state["rings"], self.label_bias, strict=True):
            contexts.append(block.row_context(ring, bias))
        return {
            **state,
            **self._row_state(tf.shape(x)[0]),
            "context": self._merge(contexts),
        }

    def pixel(self, state, x, i, j):
        contexts = self._contexts(state, j)
        window = _window(self.m, x, i, j, self.first.left)
        h = self.first.from_columns(window, self.first_matrix) + contexts[0]
        if self.m.config.activations == "post":
            h = tf.nn.relu(h)
        queues, rows = [], []
        for b, block in enumerate(self.m.blocks):
            h, u, queue = block.at_pixel(self.weights[b], contexts[b + 1], state["queues"][b], h)
            queues.append(queue)
            rows.append(state["rows"][b].write(j, u))
        return self._params(h), {**state, "queues": queues, "rows": rows}

    def end_row(self, state, x, i):
        rings = []
        for ring, row in zip(state["rings"], state["rows"], strict=True):
            new = tf.transpose(row.stack(), [1, 0, 2])[:, None]
            rings.append(tf.concat([ring[:, 1:], new], axis=1))
        return {**state, "rings": rings}


class _GatedStepper(_Stepper):
    """Cached Gated PixelCNN: the vertical stack once per row, the horizontal per pixel."""

    def __init__(self, model: PixelCNN, label):
        super().__init__(model)
        blocks = model.blocks
        self.weights = [block.step_weights() for block in blocks]
        self.label_bias = [block.label_bias(label) for block in blocks]
        self.context_sizes = [2 * b.channels for b in blocks]
        # all layers' skip 1x1s as one matmul on the concatenated gated units
        self.skip_matrix = tf.concat([b.skip.column_matrix() for b in blocks], axis=0)
        self.skip_bias = tf.add_n([tf.convert_to_tensor(b.skip.bias) for b in blocks])

    def init(self, x):
        batch = tf.shape(x)[0]
        blocks = self.m.blocks
        rings = [
            tf.zeros([batch, b.v_conv.rows_before - 1, self.width, p.channels])
            for p, b in zip(blocks[:-1], blocks[1:], strict=True)
        ]
        return {"rings": rings, **self._row_state(batch)}

    def _row_state(self, batch):
        return {
            "context": tf.zeros([self.width, batch, sum(self.context_sizes)]),
            "queues": [
                tf.zeros([batch, b.h_conv.left * b.h_conv.filters]) for b in self.m.blocks[1:]
            ],
        }

    def start_row(self, state, x, i):
        first = self.m.blocks[0]
        above = first.v_conv.rows_before  # image rows i-above .. i-1
        xs = tf.pad(self.m.scaled(x), [[0, 0], [above, 0], [0, 0], [0, 0]])
        v, context = first.row_context(_rows(xs, i, above), *self.label_bias[0])
        contexts, rings = [context], []
        for b, block in enumerate(self.m.blocks[1:]):
            rows = tf.concat([state["rings"][b], v[:, None]], axis=1)
            rings.append(rows[:, 1:])
            v, context = block.row_context(rows, *self.label_bias[b + 1])
            contexts.append(context)
        return {**self._row_state(tf.shape(x)[0]), "rings": rings, "context": self._merge(contexts)}

    def pixel(self, state, x, i, j):
        contexts = self._contexts(state, j)
        first = self.m.blocks[0]
        window = _window(self.m, x, i, j, first.h_conv.left)
        h, g = first.first_at_pixel(self.weights[0], contexts[0], window)
        units, queues = [g], []
        for b, block in enumerate(self.m.blocks[1:]):
            h, g, queue = block.at_pixel(
                self.weights[b + 1], contexts[b + 1], state["queues"][b], h
            )
            units.append(g)
            queues.append(queue)
        skips = tf.matmul(tf.concat(units, axis=1), self.skip_matrix) + self.skip_bias
        return self._params(skips), {**state, "queues": queues}

    def end_row(self, state, x, i):
        return state


class _SplitGatedStepper(_GatedStepper):
    """Cached Gated PixelCNN with split vertical convs: per layer a ring of the last
    k//2 + 1 rows of u (its 1xk vertical conv); a row's vertical outputs need the whole
    row, so they are computed when it ends, for the rows below."""

    def init(self, x):
        batch = tf.shape(x)[0]
        blocks = self.m.blocks
        rings = [tf.zeros([batch, b.v_col.rows_before, self.width, b.channels]) for b in blocks]
        pre = [tf.zeros([batch, self.width, 2 * b.channels]) for b in blocks]
        return {"rings": rings, "pre": pre, **self._row_state(batch)}

    def start_row(self, state, x, i):
        contexts, pre = [], []
        for block, ring, (_, bias_h) in zip(
            self.m.blocks, state["rings"], self.label_bias, strict=True
        ):
            p, context = block.row_context(ring, bias_h)
            pre.append(p)
            contexts.append(context)
        return {
            **state,
            **self._row_state(tf.shape(x)[0]),
            "pre": pre,
            "context": self._merge(contexts),
        }

    def end_row(self, state, x, i):
        v = self.m.scaled(tf.gather(x, i, axis=1))  # the first layer's vertical input row
        rings = []
        for block, ring, pre, (bias_v, _) in zip(
            self.m.blocks, state["rings"], state["pre"], self.label_bias, strict=True
        ):
            u, v = block.row_end(v, pre, bias_v)
            rings.append(tf.concat([ring[:, 1:], u[:, None]], axis=1))
        return {**state, "rings": rings}
