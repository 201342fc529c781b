"""Causal building blocks of the autoregressive families: masked convolutions, gated units."""

from gen_keras.layers.masked import MaskedConv2D, causal_mask, conv_precision, gate

__all__ = ["MaskedConv2D", "causal_mask", "conv_precision", "gate"]
