"""Building blocks: masked convolutions and gated units of the autoregressive families, and
convolutions that follow the training step's precision."""

from gen_keras.layers.conv import Conv2D, Conv2DTranspose
from gen_keras.layers.masked import MaskedConv2D, causal_mask, gate
from gen_keras.layers.precision import conv_precision, in_precision

__all__ = [
    "Conv2D",
    "Conv2DTranspose",
    "MaskedConv2D",
    "causal_mask",
    "conv_precision",
    "gate",
    "in_precision",
]
