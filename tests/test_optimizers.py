"""gen_keras.optimizers.Adam: Keras's Adam update in one fused kernel per variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gen_keras import averaging, optimizers


def _problem(seed: int):
    """A dense kernel, a bias and a sparse embedding, their stateless-seeded values and
    three steps of seeded gradients (the embedding's as IndexedSlices)."""
    values = [
        tf.random.stateless_normal([5, 3], [seed, 0]),
        tf.random.stateless_normal([3], [seed, 1]),
        tf.random.stateless_normal([6, 2], [seed, 2]),
    ]
    grads = []
    for step in range(3):
        dense = [
            tf.random.stateless_normal(v.shape, [seed, 10 * step + i])
            for i, v in enumerate(values[:2])
        ]
        rows = tf.random.stateless_normal([2, 2], [seed, 10 * step + 7])
        sparse = tf.IndexedSlices(rows, tf.constant([1, 4]), tf.constant([6, 2]))
        grads.append(dense + [sparse])
    return values, grads


def _train(optimizer, values, grads, rates, ema=0.0):
    variables = [keras.Variable(v) for v in values]
    if ema:
        averaging.keep_averages(_Holder(optimizer, variables), ema)
    optimizer.build(variables)

    @tf.function
    def step(g):
        optimizer.apply_gradients(zip(g, variables, strict=True))

    for g, rate in zip(grads, rates, strict=True):
        optimizer.learning_rate.assign(rate)
        step(g)
    slots = [v.numpy() for v in optimizer.variables]
    return [v.numpy() for v in variables], slots


class _Holder:
    def __init__(self, optimizer, variables):
        self.pair = (optimizer, variables)

    def optimizer_variables(self):
        return [self.pair]


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.999), (0.0, 0.9)])
def test_fused_adam_is_keras_adam(betas):
    values, grads = _problem(3)
    rates = [1e-2, 5e-3, 2e-2]  # a schedule changes the rate between steps
    kwargs = dict(learning_rate=1e-2, beta_1=betas[0], beta_2=betas[1], epsilon=1e-7)
    ours_w, ours_s = _train(optimizers.Adam(**kwargs), values, grads, rates)
    keras_w, keras_s = _train(keras.optimizers.Adam(**kwargs), values, grads, rates)
    for a, b, v in zip(ours_w, keras_w, values, strict=True):
        assert not np.allclose(a, v.numpy())  # it trained
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(ours_s) == len(keras_s)  # the same slots (checkpoints interchange)
    for a, b in zip(ours_s, keras_s, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adam_keeps_polyak_averages_as_keras_adam_does():
    values, grads = _problem(4)
    rates = [1e-2] * 3
    ours = _train(optimizers.Adam(1e-2), values, grads, rates, ema=0.9)
    theirs = _train(keras.optimizers.Adam(1e-2), values, grads, rates, ema=0.9)
    for a, b in zip(ours[1], theirs[1], strict=True):  # slots include the averages
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adam_is_one_kernel_per_dense_variable():
    values, grads = _problem(5)
    optimizer = optimizers.Adam(1e-2)
    variables = [keras.Variable(v) for v in values]
    optimizer.build(variables)
    graph = (
        tf.function(lambda g: optimizer.apply_gradients(zip(g, variables, strict=True)))
        .get_concrete_function(grads[0])
        .graph
    )
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("ResourceApplyAdam") == 2  # the kernel and the bias; not the slices


def test_fused_adam_round_trips_through_keras_serialization():
    optimizer = optimizers.Adam(3e-4, beta_1=0.5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(again) is optimizers.Adam
    assert again.beta_1 == 0.5 and float(again.learning_rate) == pytest.approx(3e-4)


def test_a_keras_adam_checkpoint_restores_into_fused_adam(tmp_path):
    values, grads = _problem(6)
    old_vars = [keras.Variable(v) for v in values]
    old = keras.optimizers.Adam(1e-2)
    old.build(old_vars)
    old.apply_gradients(zip(grads[0], old_vars, strict=True))
    path = tf.train.Checkpoint(optimizer=old, weights=old_vars).save(str(tmp_path / "ckpt"))
    new_vars = [keras.Variable(tf.zeros_like(v)) for v in values]
    new = optimizers.Adam(1e-2)
    new.build(new_vars)
    tf.train.Checkpoint(optimizer=new, weights=new_vars).restore(path).assert_consumed()
    assert int(new.iterations) == 1
    for a, b in zip(new.variables, old.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
