"""Stateless, per-row randomness: the same int32 seed [2] gives the same draw, under XLA too.

Serving signatures take one seed per row ([batch, 2]); drawing each row's noise from its
own seed makes a row's output independent of the other rows in the request.
"""

from __future__ import annotations

import tensorflow as tf


def fold_in(seed, *data) -> tf.Tensor:
    """Derives a new int32 [2] seed from `seed` and integers `data` (step, replica, ...)."""
    seed = tf.cast(seed, tf.int32)
    for d in data:
        seed = tf.cast(
            tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64)), tf.int32
        )
    return seed


def _per_row(fn, seeds, shape, dtype=tf.float32):
    seeds = tf.cast(seeds, tf.int32)
    return tf.map_fn(
        lambda s: fn(shape, seed=s), seeds, fn_output_signature=tf.TensorSpec(shape, dtype)
    )


def row_normal(seeds, shape) -> tf.Tensor:
    """seeds int32 [N, 2] -> float32 [N, *shape], standard normal, one draw per row seed."""
    return _per_row(tf.random.stateless_normal, seeds, tuple(shape))


def row_uniform(seeds, shape) -> tf.Tensor:
    """seeds int32 [N, 2] -> float32 [N, *shape], uniform in [0, 1), one draw per row seed."""
    return _per_row(tf.random.stateless_uniform, seeds, tuple(shape))


def row_seeds(seed, n: int) -> tf.Tensor:
    """n distinct per-row seeds int32 [n, 2] derived from one seed [2]."""
    return tf.map_fn(
        lambda i: fold_in(seed, i),
        tf.range(n, dtype=tf.int64),
        fn_output_signature=tf.TensorSpec([2], tf.int32),
    )
