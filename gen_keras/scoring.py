"""Scoring raw images with an exported likelihood model, one way everywhere.

The pipeline's Evaluator, the Beam scoring job and in-process checks all call `log_prob`:
an image's score depends only on its pixels, never on its position, the batch it travels
in or the worker that scores it. Binary models see the library's one binarization
(`gen_keras.data.binarize`, content-keyed), so the harness's test NLL, the Evaluator's and
Beam's are measured on the same binarized images.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gen_keras.config import DataConfig
from gen_keras.data import binarize, content_keys

NOISE_SEED = 11  # seeds [11, key]: the noise of a stochastic bound (VAE)


def image_keys(pixels) -> np.ndarray:
    """int32 [N]: a key per image from its pixels (`gen_keras.data.content_keys`)."""
    return content_keys(np.asarray(pixels, np.uint8)).numpy()


def to_data_space(
    pixels, mode: str, binarization_seed: int = DataConfig.binarization_seed
) -> tf.Tensor:
    """Raw uint8 pixels [N, H, W, C] -> a model's data space (uint8).

    Static and dynamic modes take the static draw of `gen_keras.data.binarize`.
    """
    pixels = np.asarray(pixels, np.uint8)
    if mode == "binary_threshold":
        return tf.constant((pixels >= 128).astype(np.uint8))
    if mode in ("binary_static", "binary_dynamic"):
        return binarize(pixels, binarization_seed)
    return tf.constant(pixels)


def _row_seeds(seed: int, keys) -> tf.Tensor:
    keys = tf.constant(np.asarray(keys, np.int32))
    return tf.stack([tf.fill(tf.shape(keys), seed), keys], 1)


def log_prob(
    signature,
    pixels,
    mode: str,
    labels=None,
    binarization_seed: int = DataConfig.binarization_seed,
) -> np.ndarray:
    """log p(image) in nats per image, float64 [N], through an export's `log_prob` signature.

    pixels: raw uint8 [N, H, W, C] (0..255); mode: the model's data mode;
    binarization_seed: the run's `DataConfig.binarization_seed`. Uses the tightest bound
    the signature offers: `iwae` (VAE) or the exact `log_prob` (autoregressive models).
    signature: `tf.saved_model.load(dir).signatures["log_prob"]`.
    """
    return bounds(signature, pixels, mode, labels, binarization_seed)["log_prob"]


def bounds(
    signature,
    pixels,
    mode: str,
    labels=None,
    binarization_seed: int = DataConfig.binarization_seed,
) -> dict[str, np.ndarray]:
    """{"log_prob": float64 [N]} and, for a VAE, also {"elbo", "iwae"} (nats per image);
    log_prob is the tightest bound (iwae) or the exact value. Arguments as `log_prob`."""
    pixels = np.asarray(pixels, np.uint8)
    inputs = signature.structured_input_signature[1]
    kwargs = {"images": to_data_space(pixels, mode, binarization_seed)}
    if "seed" in inputs:
        kwargs["seed"] = _row_seeds(NOISE_SEED, image_keys(pixels))
    if "label" in inputs:
        kwargs["label"] = tf.constant(np.asarray(labels, np.int32))
    out = {k: v.numpy().astype(np.float64) for k, v in signature(**kwargs).items()}
    if "iwae" in out:
        return {"log_prob": out["iwae"], "elbo": out["elbo"], "iwae": out["iwae"]}
    return {"log_prob": out["log_prob"]}
