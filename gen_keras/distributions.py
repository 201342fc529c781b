"""Pixel likelihood heads on tfp.distributions: Bernoulli, Categorical-256, logistic mixture.

A head turns a network's output `params` [batch, height, width, head.num_params(C)] into
a likelihood over images in model space (see `gen_keras.data`):

- `log_prob(params, x)` -> float32 [batch], log p(x) in nats summed over H, W, C;
- `sample(params, noise)` -> float32 images, an inverse-CDF draw from uniform noise
  [batch, H, W, head.noise_channels(C)] (explicit noise keeps samples a pure function of
  per-row seeds, and lets two samplers be compared bit for bit);
- `mean(params)` -> float32 images, E[x] (for pictures), in model space.

Parameter layout per pixel (channel c owns a contiguous block, which is how masked
convolutions group output channels by colour):
- bernoulli: C logits.
- categorical: C blocks of 256 logits.
- logistic_mixture (PixelCNN++, Salimans et al. 2017, eqs. 2-3): K mixture logits, then
  C*K means (in [-1, 1] units), C*K log scales, K*C*(C-1)/2 linear channel coefficients;
  channel c's mean is shifted by coefficients times the already known channels < c, so a
  pixel's channels are sampled together (`joint_channels`).
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

from gen_keras.config import check

LIKELIHOODS = ("auto", "bernoulli", "categorical", "logistic_mixture")
tfd = tfp.distributions


class BernoulliHead:
    """Binary pixels: x in {0, 1}, p(x=1) = sigmoid(logit)."""

    name = "bernoulli"
    joint_channels = False

    def num_params(self, channels: int) -> int:
        return channels

    def noise_channels(self, channels: int) -> int:
        return channels

    def distribution(self, params):
        return tfd.Independent(
            tfd.Bernoulli(logits=params, dtype=tf.float32), reinterpreted_batch_ndims=3
        )

    def log_prob(self, params, x):
        return self.distribution(params).log_prob(x)

    def sample(self, params, noise):
        return tf.cast(noise < tf.sigmoid(params), tf.float32)

    def mean(self, params):
        return tf.sigmoid(params)


class CategoricalHead:
    """256-level sub-pixels: x in 0..255, a softmax over all values per sub-pixel."""

    name = "categorical"
    joint_channels = False
    levels = 256

    def num_params(self, channels: int) -> int:
        return channels * self.levels

    def noise_channels(self, channels: int) -> int:
        return channels

    def logits(self, params):
        """[B, H, W, C*256] -> [B, H, W, C, 256]."""
        shape = tf.shape(params)
        return tf.reshape(params, tf.concat([shape[:-1], [-1, self.levels]], 0))

    def distribution(self, params):
        return tfd.Independent(
            tfd.Categorical(logits=self.logits(params)), reinterpreted_batch_ndims=3
        )

    def log_prob(self, params, x):
        return self.distribution(params).log_prob(tf.cast(x, tf.int32))

    def sample(self, params, noise):
        cdf = tf.math.cumsum(tf.nn.softmax(self.logits(params)), axis=-1)
        index = tf.reduce_sum(tf.cast(cdf < noise[..., None], tf.int32), axis=-1)
        return tf.cast(tf.minimum(index, self.levels - 1), tf.float32)

    def mean(self, params):
        probs = tf.nn.softmax(self.logits(params))
        return tf.reduce_sum(probs * tf.range(self.levels, dtype=tf.float32), axis=-1)


class LogisticMixtureHead:
    """8-bit pixels as a mixture of discretized logistics with linear channel coupling."""

    name = "logistic_mixture"
    joint_channels = True

    def __init__(self, num_mixtures: int = 5):
        self.k = num_mixtures

    def num_params(self, channels: int) -> int:
        return self.k * (1 + 2 * channels + channels * (channels - 1) // 2)

    def noise_channels(self, channels: int) -> int:
        return channels + 1  # the component, then one logistic draw per channel

    def _split(self, params):
        """-> mixture logits [..., K], means [..., C, K], log_scales [..., C, K], coeffs."""
        k = self.k
        total = params.shape[-1]
        c = next(c for c in range(1, 5) if self.num_params(c) == total)
        shape = tf.shape(params)[:-1]
        logits = params[..., :k]
        means = tf.reshape(params[..., k : k + c * k], tf.concat([shape, [c, k]], 0))
        log_scales = tf.reshape(
            params[..., k + c * k : k + 2 * c * k], tf.concat([shape, [c, k]], 0)
        )
        log_scales = tf.maximum(log_scales, -7.0)
        coeffs = tf.tanh(params[..., k + 2 * c * k :])
        return c, logits, means, log_scales, coeffs

    def _coupled_means(self, c, means, coeffs, x_unit):
        """Shifts channel j's means by sum_{i<j} coeff_ij * x_i (x in [-1, 1])."""
        out, used = [means[..., 0, :]], 0
        for j in range(1, c):
            shift = 0.0
            for i in range(j):
                shift += coeffs[..., used * self.k : (used + 1) * self.k] * x_unit[..., i : i + 1]
                used += 1
            out.append(means[..., j, :] + shift)
        return tf.stack(out, axis=-2)

    @staticmethod
    def _to_pixels(loc_unit, log_scale):
        """Logistic in [-1, 1] units -> on the 0..255 grid, shifted for ceil quantization."""
        return 127.5 * (loc_unit + 1.0) - 0.5, 127.5 * tf.exp(log_scale)

    def log_prob(self, params, x):
        c, logits, means, log_scales, coeffs = self._split(params)
        x_unit = x / 127.5 - 1.0
        loc, scale = self._to_pixels(self._coupled_means(c, means, coeffs, x_unit), log_scales)
        # Component k is a product over channels; [..., C, K] -> batch [..., K], event [C].
        loc, scale = tf.linalg.matrix_transpose(loc), tf.linalg.matrix_transpose(scale)
        component = tfd.Independent(
            tfd.QuantizedDistribution(tfd.Logistic(loc, scale), low=0.0, high=255.0),
            reinterpreted_batch_ndims=1,
        )
        pixel = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), component)
        return tf.reduce_sum(pixel.log_prob(x), axis=[-2, -1])

    def sample(self, params, noise):
        c, logits, means, log_scales, coeffs = self._split(params)
        cdf = tf.math.cumsum(tf.nn.softmax(logits), axis=-1)
        pick = tf.minimum(tf.reduce_sum(tf.cast(cdf < noise[..., :1], tf.int32), -1), self.k - 1)
        onehot = tf.one_hot(pick, self.k)
        channels, used = [], 0
        for j in range(c):
            mean = means[..., j, :]
            for i in range(j):
                mean += coeffs[..., used * self.k : (used + 1) * self.k] * (
                    channels[i][..., None] / 127.5 - 1.0
                )
                used += 1
            loc, scale = self._to_pixels(
                tf.reduce_sum(mean * onehot, -1), tf.reduce_sum(log_scales[..., j, :] * onehot, -1)
            )
            u = tf.clip_by_value(noise[..., j + 1], 1e-6, 1.0 - 1e-6)
            draw = tf.math.ceil(loc + scale * (tf.math.log(u) - tf.math.log1p(-u)))
            channels.append(tf.clip_by_value(draw, 0.0, 255.0))
        return tf.stack(channels, axis=-1)

    def mean(self, params):
        c, logits, means, _, coeffs = self._split(params)
        probs = tf.nn.softmax(logits)[..., None, :]
        # Coupling uses each component's own mean of the earlier channels (an approximation).
        x_unit = tf.reduce_sum(means * probs, -1)
        coupled = self._coupled_means(c, means, coeffs, x_unit)
        return tf.clip_by_value(127.5 * (tf.reduce_sum(coupled * probs, -1) + 1.0), 0.0, 255.0)


def make_head(name: str, num_mixtures: int = 5):
    """Head by name: 'bernoulli', 'categorical' or 'logistic_mixture'."""
    if name == "bernoulli":
        return BernoulliHead()
    if name == "categorical":
        return CategoricalHead()
    if name == "logistic_mixture":
        return LogisticMixtureHead(num_mixtures)
    raise ValueError(f"likelihood={name!r} is not one of bernoulli, categorical, logistic_mixture")


def default_likelihood(binary: bool) -> str:
    return "bernoulli" if binary else "categorical"


def resolve_likelihood(name: str, spec) -> str:
    """A likelihood-model's head name for the data: `auto` is bernoulli for binary data and
    categorical for uint8; raises UsageError where the head does not fit the data mode."""
    name = default_likelihood(spec.binary) if name == "auto" else name
    check(
        spec.binary == (name == "bernoulli"),
        f"likelihood={name!r} does not fit binarization={spec.mode!r}: use bernoulli for "
        "binary data, categorical or logistic_mixture for uint8",
    )
    check(
        spec.binary or spec.mode == "uint8",
        f"likelihood models need discrete pixels: binarization={spec.mode!r} must be a binary "
        "mode or 'uint8'",
    )
    return name


def bits_per_dim(nats, num_dims: int):
    """Nats per image -> bits per dimension (sub-pixel)."""
    return nats / (num_dims * math.log(2.0))
