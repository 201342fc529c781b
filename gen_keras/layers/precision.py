"""The precision convolutions run in while a training step is traced: float32 (the
default, and always for evaluation, sampling and exports) or bfloat16.

Layers that follow it: MaskedConv2D (the autoregressive families) and the Conv2D /
Conv2DTranspose of `gen_keras.layers.conv` (the VAE's residual networks).
"""

from __future__ import annotations

import contextlib
import functools

from gen_keras.config import PRECISIONS, check_choice

# The dtype the convolutions run in when traced: a module global, not a context variable,
# so that replica threads (tf.distribute) see what the thread that entered the scope set.
_conv_precision = ["float32"]


def current() -> str:
    """The precision convolutions traced now run in."""
    return _conv_precision[0]


@contextlib.contextmanager
def conv_precision(precision: str):
    """Within this scope, convolutions traced or run compute in `precision`.

    MaskedConv2D casts its input and masked kernel for the convolution and its output back
    to float32 (then adds its float32 bias): autocast of the convolutions only, everything
    else stays float32. `gen_keras.layers.conv`'s layers keep their output in `precision`,
    so a network built of them runs in it from its first convolution to its last (the
    model casts the network's output back to float32).

    "bfloat16" is for training steps on CPUs with BF16 instructions: on an AVX512-BF16 CPU
    oneDNN's bf16 kernels ran 128/256-channel convs 1.36-1.84x faster than float32 (forward
    and both gradients; 16-channel ones 1.15x); on an AVX2-only CPU TensorFlow's bf16
    convolutions were 7x slower than float32. Outside the scope (the default) everything is
    float32: evaluation, sampling and exports.
    """
    check_choice("precision", precision, PRECISIONS)
    before = _conv_precision[0]
    _conv_precision[0] = precision
    try:
        yield
    finally:
        _conv_precision[0] = before


def in_precision(fn, precision: str):
    """fn wrapped so that it runs (and is traced) under `conv_precision(precision)`."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "float32":
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with conv_precision(precision):
            return fn(*args, **kwargs)

    return wrapped
