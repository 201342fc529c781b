"""The generic raster sampler on a toy causal model: it samples the model's distribution."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from gen_keras import sampling
from gen_keras.data import DataSpec
from gen_keras.distributions import BernoulliHead, CategoricalHead, LogisticMixtureHead
from gen_keras.layers import MaskedConv2D


class Toy:
    """A two-layer masked conv net: params_fn(x, label) for any head and colour grouping."""

    def __init__(self, head, spec, seed=0):
        c = spec.shape[-1]
        groups = 1 if head.joint_channels else c
        tf.keras.utils.set_random_seed(seed)
        init = "random_normal"
        self.first = MaskedConv2D(4 * groups, 3, "A", groups, kernel_initializer=init)
        self.out = MaskedConv2D(head.num_params(c), 3, "B", groups, kernel_initializer=init)
        self.embed = tf.constant(
            np.random.default_rng(seed).normal(size=(10, 4 * groups)), tf.float32
        )
        self.scale = 1.0 if spec.binary else 1.0 / 255.0

    def __call__(self, x, label=None):
        h = self.first(x * self.scale)
        if label is not None:
            h += tf.gather(self.embed, label)[:, None, None]
        return 3.0 * self.out(tf.tanh(h))


def _all_binary_images(spec):
    n = spec.num_dims
    bits = np.array(list(itertools.product([0.0, 1.0], repeat=n)), np.float32)
    return bits.reshape(-1, *spec.shape)


def _seeds(n, base=7):
    """int32 [n, 2] distinct per-row seeds (numpy: an eager map_fn over rows is slow)."""
    return np.stack([np.arange(n), np.full(n, base)], axis=1).astype(np.int32)


@pytest.mark.parametrize("shape", [(2, 3, 1), (1, 2, 2)])
def test_sample_frequencies_match_the_model_probabilities(shape):
    spec = DataSpec(shape, "binary_static", 10)
    head = BernoulliHead()
    model = Toy(head, spec)
    images = _all_binary_images(spec)
    probs = np.exp(head.log_prob(model(images), images).numpy())
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    n = 6000
    draw = tf.function(lambda s: sampling.sample(model, head, spec, s))
    samples = draw(_seeds(n, base=4)).numpy()
    codes = samples.reshape(n, -1) @ (2 ** np.arange(spec.num_dims)[::-1])
    freq = np.bincount(codes.astype(int), minlength=len(images)) / n
    # images are enumerated in the same bit order as `codes`
    stderr = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) < 4.5 * stderr + 1e-3), (freq, probs)


@pytest.mark.parametrize(
    "head, mode",
    [
        (BernoulliHead(), "binary_static"),
        (CategoricalHead(), "uint8"),
        (LogisticMixtureHead(2), "uint8"),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_same_seed_same_sample_and_rows_are_independent(head, mode):
    spec = DataSpec((3, 4, 3), mode, 10)
    model = Toy(head, spec)
    draw = tf.function(lambda s, label: sampling.sample(model, head, spec, s, label))
    seeds, label = _seeds(3), tf.constant([1, 2, 3])
    a, b = draw(seeds, label).numpy(), draw(seeds, label).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[1:2], draw(seeds[1:2], label[1:2]).numpy())
    assert a.shape == (3, 3, 4, 3) and not np.array_equal(a[0], a[1])
    assert set(np.unique(a)) <= set(range(spec.max_value + 1))


@pytest.mark.parametrize(
    "head, mode",
    [(BernoulliHead(), "binary_static"), (LogisticMixtureHead(2), "uint8")],
    ids=lambda v: getattr(v, "name", v),
)
def test_completion_keeps_known_pixels_and_ignores_unknown_values(head, mode):
    spec = DataSpec((4, 5, 2), mode, 10)
    model = Toy(head, spec)
    top = np.zeros((3, 4, 5, 2), np.float32)
    top[:, :2] = 1.0
    known = top.copy()
    known[0, 3, 1, 0] = 1.0  # a known sub-pixel below unknown ones
    hi = spec.max_value + 1
    images = tf.floor(tf.random.stateless_uniform([3, 4, 5, 2], [1, 1], maxval=hi))
    fill = tf.function(lambda x, k, s: sampling.complete(model, head, spec, x, k, s))
    out = fill(images, known, _seeds(3)).numpy()
    np.testing.assert_array_equal(out[known == 1], images.numpy()[known == 1])
    other = tf.where(known == 1, images, hi - 1 - images)
    np.testing.assert_array_equal(out, fill(other, known, _seeds(3)).numpy())
    # completing everything known returns the images; nothing known is plain sampling
    np.testing.assert_array_equal(fill(images, np.ones_like(known), _seeds(3)), images)
    np.testing.assert_array_equal(
        fill(images, np.zeros_like(known), _seeds(3)),
        tf.function(lambda s: sampling.sample(model, head, spec, s))(_seeds(3)),
    )


def test_completion_conditions_on_the_known_pixels():
    """p(x1 | x0) of a 1x2 binary image: completion frequencies follow the conditional."""
    spec = DataSpec((1, 2, 1), "binary_static", 10)
    head = BernoulliHead()
    model = Toy(head, spec, seed=3)
    n = 4000
    known = np.zeros((n, 1, 2, 1), np.float32)
    known[:, 0, 0] = 1.0
    images = np.zeros_like(known)
    images[: n // 2, 0, 0] = 1.0
    fill = tf.function(lambda x, k, s: sampling.complete(model, head, spec, x, k, s))
    out = fill(images, known, _seeds(n)).numpy()
    for x0, rows in ((1.0, slice(0, n // 2)), (0.0, slice(n // 2, n))):
        logits = model(tf.constant([[[[x0], [0.0]]]]))
        p = float(tf.sigmoid(logits[0, 0, 1, 0]))
        freq = out[rows, 0, 1, 0].mean()
        assert abs(freq - p) < 4.5 * np.sqrt(p * (1 - p) / (n // 2)) + 1e-3, (x0, freq, p)


def test_reference_sampler_compiles_with_xla():
    spec = DataSpec((3, 4, 1), "binary_static", 10)
    head = BernoulliHead()
    model = Toy(head, spec)
    known = np.zeros((2, 3, 4, 1), np.float32)
    known[:, 0] = 1.0
    images = np.ones_like(known)
    fill = tf.function(
        lambda x, k, s: sampling.complete(model, head, spec, x, k, s), jit_compile=True
    )
    out = fill(images, known, _seeds(2)).numpy()
    assert set(np.unique(out)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out[:, 0], 1.0)
    np.testing.assert_array_equal(out, fill(images, known, _seeds(2)).numpy())
