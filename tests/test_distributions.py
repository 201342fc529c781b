"""Likelihood heads: normalisation, sampling frequencies, parameter layout, bits/dim."""

import math

import numpy as np
import pytest
import tensorflow as tf

from gen_keras.distributions import (
    BernoulliHead,
    CategoricalHead,
    LogisticMixtureHead,
    bits_per_dim,
    make_head,
)


def _all_values(head):
    return np.array([0.0, 1.0]) if head.name == "bernoulli" else np.arange(256.0)


@pytest.mark.parametrize(
    "head", [BernoulliHead(), CategoricalHead(), LogisticMixtureHead(4)], ids=lambda h: h.name
)
def test_single_channel_probabilities_sum_to_one(head):
    params = tf.random.stateless_normal([3, 2, 5, head.num_params(1)], seed=[1, 2]) * 2.0
    values = _all_values(head)
    # log p of the image whose every pixel equals v; pixels are independent given params
    per_pixel = []
    for v in values:
        x = tf.fill([3, 2, 5, 1], float(v))
        per_pixel.append(head.log_prob(params[:, :1, :1], x[:, :1, :1]))
    total = tf.reduce_logsumexp(tf.stack(per_pixel), axis=0)
    np.testing.assert_allclose(total.numpy(), 0.0, atol=2e-4)


def test_log_prob_event_shape_sums_over_height_width_channels():
    head = CategoricalHead()
    params = tf.random.stateless_normal([3, 5, 7, head.num_params(2)], seed=[3, 4])
    x = tf.random.stateless_uniform([3, 5, 7, 2], seed=[5, 6], maxval=256, dtype=tf.int32)
    lp = head.log_prob(params, tf.cast(x, tf.float32))
    assert lp.shape == (3,)
    assert head.distribution(params).event_shape == (5, 7, 2)
    manual = tf.reduce_sum(
        tf.gather(tf.nn.log_softmax(head.logits(params)), x, batch_dims=4), axis=[1, 2, 3]
    )
    np.testing.assert_allclose(lp, manual, rtol=1e-5)


def test_logistic_mixture_matches_the_pixelcnnpp_formula():
    """Three channels with linear coupling, against a direct numpy transcription."""
    k = 3
    head = LogisticMixtureHead(k)
    params = tf.random.stateless_normal([4, 1, 1, head.num_params(3)], seed=[7, 8]).numpy()
    x = np.array([[0, 128, 255], [12, 13, 14], [250, 3, 100], [64, 64, 64]], np.float32)
    got = head.log_prob(tf.constant(params), tf.constant(x[:, None, None, :])).numpy()

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    p = params[:, 0, 0].astype(np.float64)
    logits, means = p[:, :k], p[:, k : 4 * k].reshape(4, 3, k)
    log_s = np.maximum(p[:, 4 * k : 7 * k].reshape(4, 3, k), -7.0)
    c = np.tanh(p[:, 7 * k :])
    xu = x / 127.5 - 1.0
    m = means.copy()
    m[:, 1] += c[:, :k] * xu[:, 0:1]
    m[:, 2] += c[:, k : 2 * k] * xu[:, 0:1] + c[:, 2 * k :] * xu[:, 1:2]
    inv_s = np.exp(-log_s)
    xc = xu[:, :, None]
    upper = np.where(x[:, :, None] == 255, 1.0, sigmoid(inv_s * (xc + 1 / 255 - m)))
    lower = np.where(x[:, :, None] == 0, 0.0, sigmoid(inv_s * (xc - 1 / 255 - m)))
    log_comp = np.log(upper - lower).sum(1) + logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = np.log(np.exp(log_comp).sum(1))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("head", [BernoulliHead(), CategoricalHead()], ids=lambda h: h.name)
def test_inverse_cdf_sampling_matches_probabilities(head):
    params = tf.random.stateless_normal([1, 1, 1, head.num_params(1)], seed=[9, 9])
    n = 40_000
    noise = tf.random.stateless_uniform([n, 1, 1, 1], seed=[1, 1])
    draws = head.sample(tf.tile(params, [n, 1, 1, 1]), noise).numpy().ravel().astype(int)
    values = _all_values(head)
    probs = np.exp([head.log_prob(params, tf.fill([1, 1, 1, 1], float(v)))[0] for v in values])
    freq = np.bincount(draws, minlength=len(values)) / n
    np.testing.assert_allclose(freq, probs, atol=0.01)


def test_logistic_mixture_samples_are_valid_pixels_and_follow_the_density():
    head = LogisticMixtureHead(2)
    params = np.zeros([1, 1, 1, head.num_params(1)], np.float32)
    params[..., 2:4] = [-0.5, 0.5]  # component means at 63.75 and 191.25
    params[..., 4:6] = -3.0  # small scales
    n = 20_000
    noise = tf.random.stateless_uniform([n, 1, 1, 2], seed=[2, 3])
    draws = head.sample(tf.tile(params, [n, 1, 1, 1]), noise).numpy().ravel()
    assert draws.min() >= 0 and draws.max() <= 255 and np.all(draws == np.round(draws))
    lp = np.array(
        [head.log_prob(params, tf.fill([1, 1, 1, 1], float(v))).numpy()[0] for v in range(256)]
    )
    freq = np.bincount(draws.astype(int), minlength=256) / n
    assert abs((freq * np.arange(256)).sum() - (np.exp(lp) * np.arange(256)).sum()) < 1.0
    assert 0.45 < freq[:128].sum() < 0.55  # the two modes carry equal weight


def test_heads_by_name_and_bits_per_dim():
    assert make_head("logistic_mixture", 7).num_params(3) == 7 * 10
    assert make_head("categorical").num_params(3) == 768
    with pytest.raises(ValueError, match="likelihood='gauss'"):
        make_head("gauss")
    assert math.isclose(bits_per_dim(784 * math.log(2.0), 784), 1.0)
