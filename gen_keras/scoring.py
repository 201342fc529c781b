"""Scoring raw images with an exported likelihood model, one way everywhere.

The pipeline's Evaluator, the Beam scoring job and in-process checks all call `log_prob`:
an image's score depends only on its pixels (per-row seeds derive from a CRC of the image
bytes), never on its position, the batch it travels in or the worker that scores it.
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf

BINARIZE_SEED = 7  # seeds [7, key]: the Bernoulli draw of a binary model's input
NOISE_SEED = 11  # seeds [11, key]: the noise of a stochastic bound (VAE)


def image_keys(pixels) -> np.ndarray:
    """int32 [N]: a key per image from its bytes (CRC-32), the seed of its random draws."""
    pixels = np.ascontiguousarray(np.asarray(pixels, np.uint8))
    return np.array([zlib.crc32(row.tobytes()) % (2**31) for row in pixels], np.int32)


def to_data_space(pixels, mode: str) -> tf.Tensor:
    """Raw uint8 pixels [N, H, W, C] -> a model's data space (uint8).

    Binary modes draw one Bernoulli(pixel/255) per pixel from per-row seeds [7, key].
    """
    pixels = np.asarray(pixels, np.uint8)
    if mode == "binary_threshold":
        return tf.constant((pixels >= 128).astype(np.uint8))
    if mode not in ("binary_static", "binary_dynamic"):
        return tf.constant(pixels)
    seeds = _row_seeds(BINARIZE_SEED, image_keys(pixels))
    uniform = tf.map_fn(
        lambda s: tf.random.stateless_uniform(pixels.shape[1:], s),
        seeds,
        fn_output_signature=tf.float32,
    )
    return tf.cast(uniform < tf.constant(pixels, tf.float32) / 255.0, tf.uint8)


def _row_seeds(seed: int, keys) -> tf.Tensor:
    keys = tf.constant(np.asarray(keys, np.int32))
    return tf.stack([tf.fill(tf.shape(keys), seed), keys], 1)


def log_prob(signature, pixels, mode: str, labels=None) -> np.ndarray:
    """log p(image) in nats per image, float64 [N], through an export's `log_prob` signature.

    pixels: raw uint8 [N, H, W, C] (0..255); mode: the model's data mode. Uses the tightest
    bound the signature offers: `iwae` (VAE) or the exact `log_prob` (autoregressive
    models). signature: `tf.saved_model.load(dir).signatures["log_prob"]`.
    """
    pixels = np.asarray(pixels, np.uint8)
    inputs = signature.structured_input_signature[1]
    kwargs = {"images": to_data_space(pixels, mode)}
    if "seed" in inputs:
        kwargs["seed"] = _row_seeds(NOISE_SEED, image_keys(pixels))
    if "label" in inputs:
        kwargs["label"] = tf.constant(np.asarray(labels, np.int32))
    out = signature(**kwargs)
    return (out["iwae"] if "iwae" in out else out["log_prob"]).numpy().astype(np.float64)
