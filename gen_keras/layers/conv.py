"""Keras' Conv2D and Conv2DTranspose, following `gen_keras.layers.precision`.

In float32 (the default) they compute what Keras' layers compute, with the bias added by
BiasAdd, which grappler fuses into the convolution. Under `conv_precision("bfloat16")` the
input, kernel and bias are cast to bf16 and the output stays bf16, so that a network built
of these layers (the VAE's residual encoder and decoder) runs in bf16 from its first
convolution to its last and the model casts only the network's output back to float32. The
variables stay float32; their gradients arrive in float32 through the casts.

Every layer in such a network is built with autocast=False: Keras would otherwise cast each
layer's bf16 input back to float32 (tests/test_vae.py counts the casts of a training step).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gen_keras.layers.precision import current


def _finish(layer, out, dtype):
    if layer.use_bias:
        out = tf.nn.bias_add(out, tf.cast(layer.bias, dtype))
    return out if layer.activation is None else layer.activation(out)


class _NoAutocast:
    """Leaves the layer's input in the dtype it arrives in (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(*args, **kwargs)


class Conv2D(_NoAutocast, keras.layers.Conv2D):
    """keras.layers.Conv2D (channels last) computing in the traced precision."""

    def call(self, inputs):
        dtype = current()
        out = self.convolution_op(tf.cast(inputs, dtype), tf.cast(self.kernel, dtype))
        return _finish(self, out, dtype)


class Conv2DTranspose(_NoAutocast, keras.layers.Conv2DTranspose):
    """keras.layers.Conv2DTranspose (channels last) computing in the traced precision."""

    def call(self, inputs):
        dtype = current()
        out = keras.ops.conv_transpose(
            tf.cast(inputs, dtype),
            tf.cast(self.kernel, dtype),
            strides=list(self.strides),
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return _finish(self, out, dtype)
