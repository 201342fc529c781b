"""VAE: shapes, parameter count, the bounds (ELBO <= IWAE_k, monotone in k), training, seeds."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from gen_keras import data as data_lib
from gen_keras import evaluation, export, rng, train
from gen_keras.config import DataConfig, UsageError
from gen_keras.data import DataSpec, ImageData
from gen_keras.layers import in_precision
from gen_keras.models import vae
from tests.conftest import small_data, small_train
from tests.serving_standin import Served

SPEC = DataSpec((8, 12, 1), "binary_static", 10)  # distinct sizes: a swapped axis fails


def _batch(spec=SPEC, n=3, seed=0):
    if spec.binary:
        x = tf.cast(tf.random.stateless_uniform([n, *spec.shape], [seed, 1]) < 0.3, tf.float32)
    else:
        x = tf.floor(tf.random.stateless_uniform([n, *spec.shape], [seed, 1], maxval=256.0))
    return {
        "image": x,
        "label": tf.range(n, dtype=tf.int32) % 10,
        "seed": tf.constant([seed, 2], tf.int32),
    }


def _model(config=None, spec=SPEC):
    model = vae.build(config or vae.small(), spec, 1e-2)
    model.build_for_training(_batch(spec))
    return model


def test_shapes_of_networks_and_distributions():
    model = _model(vae.Config(latent_dim=4, hidden=8))
    x = _batch()["image"]
    q = model.posterior(x)
    assert q.batch_shape == (3,) and q.event_shape == (4,)
    assert model.prior().event_shape == (4,) and model.prior().batch_shape == ()
    assert model.decode_params(q.sample(seed=[1, 1])).shape == (3, 8, 12, 1)
    assert model(x).shape == (3, 8, 12, 1)
    assert model.head.distribution(model.decode_params(q.mean())).event_shape == (8, 12, 1)


def test_parameter_count_of_the_mlp_architecture():
    model = _model(vae.Config(arch="mlp", hidden=5, latent_dim=2))
    # encoder 96*5+5 + 5*5+5, posterior 5*4+4, decoder 2*5+5 + 5*5+5 + 5*96+96
    assert model.count_params() == 515 + 24 + 15 + 30 + 576


def test_categorical_and_mixture_heads_on_8bit_data():
    spec = DataSpec((8, 12, 2), "uint8", 10)
    for likelihood, params in (("categorical", 512), ("logistic_mixture", 3 * 6)):
        model = _model(
            vae.Config(latent_dim=3, hidden=4, likelihood=likelihood, num_mixtures=3), spec
        )
        assert model.decode_params(tf.zeros([3, 3])).shape == (3, 8, 12, params)
        logs = model.train_step(_batch(spec))
        assert math.isfinite(float(logs["loss"]))
        nats = -float(logs["elbo"])
        assert math.isclose(float(logs["bits_per_dim"]), nats / (192 * math.log(2)), rel_tol=1e-4)


def test_likelihood_and_data_mode_must_fit():
    with pytest.raises(UsageError, match="does not fit"):
        vae.build(vae.Config(likelihood="categorical"), SPEC, 1e-3)
    with pytest.raises(UsageError, match="divisible by 4"):
        vae.build(vae.small(), DataSpec((5, 7, 1), "binary_static", 10), 1e-3)
    with pytest.raises(UsageError, match="kl='exact'"):
        vae.Config(kl="exact")


def _resnet(**fields) -> vae.Config:
    small = dict(latent_dim=2, hidden=4, stages=2, residual_blocks=1, residual_hidden=3)
    return vae.Config(arch="resnet", eval_k=8, export_k=4, chunk=4, **{**small, **fields})


def test_resnet_preset_is_pytorch_generatives_vae():
    # pytorch-generative's VAE(in_channels=1, out_channels=1, latent_channels=16,
    # strides=[2, 2, 2, 2], hidden_channels=64, residual_channels=32), as its reproduce()
    # builds it: sum(p.numel() for p in model.parameters()) = 974,241 (torch, from a checkout).
    model = _model(vae.reproduce("resnet"), DataSpec((28, 28, 1), "binary_static", 10))
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 974_241
    assert model.pad == [[0, 0], [2, 2], [2, 2], [0, 0]]  # its F.pad(x, (2, 2, 2, 2)) to 32x32
    assert model.posterior(tf.zeros([3, 28, 28, 1])).event_shape == (64,)  # 16 on a 2x2 grid
    assert vae.reproduce().arch == "mlp"  # the default reproduce is still Burda et al.'s


def test_resnet_pads_to_its_grid_and_crops_back():
    model = _model(_resnet(), DataSpec((5, 7, 1), "binary_static", 10))  # padded to 8x8
    x = _batch(DataSpec((5, 7, 1), "binary_static", 10))["image"]
    q = model.posterior(x)
    assert q.batch_shape == (3,) and q.event_shape == (2 * 2 * 2,)  # a 2x2 grid of 2
    assert model.prior().event_shape == (8,)
    assert model.pad == [[0, 0], [1, 2], [0, 1], [0, 0]]
    params = model.decode_params(q.mean())
    full = model.decoder(tf.reshape(q.mean(), [3, 2, 2, 2]))
    assert full.shape == (3, 8, 8, 1) and params.shape == (3, 5, 7, 1)
    np.testing.assert_array_equal(params, full[:, 1:6, 0:7])  # where the image was padded in
    # every weight of encoder, posterior split and decoder takes part in the ELBO
    with tf.GradientTape() as tape:
        distortion, rate = model.elbo_terms(x, None, tf.constant([1, 2]))
        loss = tf.reduce_mean(distortion + rate)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_resnet_iwae_bound_and_export_through_the_loader(tmp_path):
    spec = DataSpec((5, 7, 1), "binary_static", 10)
    model = _model(_resnet(), spec)
    x = _batch(spec, n=16)["image"]
    seed = tf.constant([5, 5])
    elbo = float(tf.reduce_mean(-tf.add_n(model.elbo_terms(x, None, seed))))
    iwae = float(tf.reduce_mean(model.iwae(x, None, 32, model._batch_noise(x, seed))))
    assert elbo < iwae < 0
    served = Served(export.export(model, str(tmp_path)))
    try:
        seeds = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
        assert served("sample", seed=seeds)["images"].shape == (3, 5, 7, 1)
        z = served("encode", images=np.zeros([3, 5, 7, 1], np.uint8))["z_mean"]
        assert z.shape == (3, 8)
        assert served("decode", z=z)["images"].shape == (3, 5, 7, 1)
        scores = served("log_prob", images=np.ones([3, 5, 7, 1], np.uint8), seed=seeds)
        assert scores["iwae"].shape == scores["elbo"].shape == (3,)
        assert np.all(np.isfinite(scores["iwae"])) and np.all(np.isfinite(scores["elbo"]))
    finally:
        served.close()


def test_resnet_refuses_a_label():
    with pytest.raises(UsageError, match="arch='resnet' is unconditional"):
        _resnet(conditional=True)


def _ops(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return graph.get_operations()


@pytest.mark.parametrize("train_k", [1, 3])
def test_micro_batches_give_the_whole_batchs_update(train_k):
    # The step's noise is drawn for the batch and split with the images, so chunks of 2
    # of a batch of 6 move every weight as the whole batch does (ELBO and IWAE_3).
    spec = DataSpec((5, 7, 1), "binary_static", 10)
    batch = _batch(spec, n=6)
    weights, initial = [], None
    for chunk in (0, 2):
        keras.utils.set_random_seed(3)
        model = _model(_resnet(train_k=train_k), spec)
        initial = initial or [v.numpy() for v in model.trainable_variables]
        model.micro_batch = chunk
        logs = model.train_step(batch)
        weights.append(([v.numpy() for v in model.trainable_variables], float(logs["loss"])))
    (whole, whole_loss), (chunked, chunked_loss) = weights
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-5)
    moved = 0
    for a, b, before in zip(whole, chunked, initial, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
        moved += int(np.any(a != before))
    assert moved == len(whole)  # every weight took the step
    model.micro_batch = 4
    with pytest.raises(UsageError, match=r"^micro_batch=4 must divide each replica's batch"):
        model.train_step(batch)


def test_resnet_trains_in_bfloat16_and_evaluates_in_float32():
    spec = DataSpec((5, 7, 1), "binary_static", 10)
    keras.utils.set_random_seed(4)
    model = _model(_resnet(hidden=16, residual_hidden=8), spec)
    batch = _batch(spec, n=8)
    x, seed = batch["image"], batch["seed"]

    def loss_and_grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.add_n(model.elbo_terms(x, None, seed)))
        return loss, tape.gradient(loss, model.trainable_variables)

    def conv_dtypes(fn):
        kinds = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
        return {(op.type, op.get_attr("T").name) for op in _ops(fn) if op.type in kinds}

    def casts(fn):
        return sum(op.type == "Cast" for op in _ops(fn))

    want = loss_and_grads()
    got = in_precision(loss_and_grads, "bfloat16")()
    train_ops = conv_dtypes(in_precision(loss_and_grads, "bfloat16"))
    assert {t for _, t in train_ops} == {"bfloat16"}  # forward, both gradients
    assert {k for k, _ in train_ops} == {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"}
    assert {t for _, t in conv_dtypes(loss_and_grads)} == {"float32"}  # outside the scope
    # bf16 flows from the first conv to the last: a cast per kernel and bias, one at each
    # network's input and output, and the gradient of each; none between layers
    n_vars = len(model.encoder.trainable_variables) + len(model.decoder.trainable_variables)
    extra = casts(in_precision(loss_and_grads, "bfloat16")) - casts(loss_and_grads)
    assert extra <= 2 * (n_vars + 4)
    assert got[0].dtype == tf.float32 and all(g.dtype == tf.float32 for g in got[1])
    assert float(got[0]) == pytest.approx(float(want[0]), rel=0.02)
    # every gradient points where float32's does: bf16 keeps 8 significant bits, and
    # rounding errors add up over the layers backpropagated through
    # (here 0.3-11% of the gradient's norm, on a random network's small gradients)
    for a, b in zip(got[1], want[1], strict=True):
        a, b = tf.reshape(a, [-1]), tf.reshape(b, [-1])
        assert float(tf.reduce_sum(a * b) / (tf.norm(a) * tf.norm(b))) > 0.98


def test_precision_and_micro_batch_reach_the_vae_through_the_harness(mnist_dir, tmp_path):
    data = small_data(mnist_dir)
    config = small_train(
        tmp_path / "run",
        epochs=1,
        steps_per_epoch=2,
        eval_steps=1,
        micro_batch=16,
        precision="bfloat16",
    )
    result = train.fit("vae", _resnet(), data, config, verbose=0)
    assert result.model.micro_batch == 16 and result.step == 2
    assert math.isfinite(result.eval_logs["loss"])
    mlp = small_train(tmp_path / "mlp", precision="bfloat16")
    with pytest.raises(UsageError, match=r"^precision='bfloat16' casts the convolutions of .*vae"):
        train.fit("vae", vae.small(), data, mlp, verbose=0)
    assert not (tmp_path / "mlp").exists()  # refused before the run directory was made


def test_analytic_kl_equals_the_monte_carlo_average():
    model = _model()
    x = _batch()["image"]
    q = model.posterior(x)
    z = q.sample(20_000, seed=[4, 4])
    mc = tf.reduce_mean(q.log_prob(z) - model.prior().log_prob(z), 0)
    analytic = vae.tfd.kl_divergence(q, model.prior())
    np.testing.assert_allclose(mc, analytic, atol=0.05)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k():
    model = _model()
    x = _batch(n=64)["image"]
    seed = tf.constant([5, 5])
    distortion, rate = model.elbo_terms(x, None, seed)
    elbo = float(tf.reduce_mean(-(distortion + rate)))
    bounds = [
        float(tf.reduce_mean(model.iwae(x, None, k, model._batch_noise(x, seed))))
        for k in (1, 8, 64)
    ]
    assert bounds[0] < bounds[1] < bounds[2]
    assert elbo < bounds[1]
    assert abs(bounds[0] - elbo) < 0.05 * abs(elbo)  # IWAE_1 is a one-sample ELBO


def test_streamed_iwae_equals_one_big_logsumexp():
    model = _model()  # chunk=4
    x = _batch()["image"]
    eps = tf.random.stateless_normal([10, 3, 4], seed=[6, 6])
    noise = lambda i, n: eps[i * 4 : i * 4 + n]  # noqa: E731 - chunks of 4, then the rest (2)
    streamed = model.iwae(x, None, 10, noise)
    direct = tf.reduce_logsumexp(model.log_weights(x, None, model.posterior(x), eps), 0)
    np.testing.assert_allclose(streamed, direct - math.log(10), rtol=1e-5)


def test_iwae_training_objective_is_the_iwae_bound():
    model = _model(vae.Config(latent_dim=4, hidden=8, train_k=5))
    logs = model.test_step(_batch())  # test_step reports the ELBO
    assert math.isfinite(float(logs["elbo"]))
    model.trackers["loss"].reset_state()
    logs = model.train_step(_batch())
    assert float(logs["loss"]) < -float(logs["elbo"])  # -IWAE_5 < -ELBO estimate


def test_conditional_decoder_depends_on_the_label():
    model = _model(vae.Config(latent_dim=4, hidden=8, conditional=True))
    z = tf.zeros([2, 4])
    a = model.decode_params(z, tf.constant([1, 1]))
    b = model.decode_params(z, tf.constant([1, 7]))
    np.testing.assert_allclose(a[0], b[0])
    assert not np.allclose(a[1], b[1])


def test_same_seed_same_samples_and_rows_are_independent():
    model = _model()
    seeds = rng.row_seeds(tf.constant([1, 2]), 3)
    a = model._sample(seeds, None)["sample"]
    b = model._sample(seeds, None)["sample"]
    np.testing.assert_array_equal(a, b)
    alone = model._sample(seeds[1:2], None)["sample"]
    np.testing.assert_array_equal(a[1:2], alone)
    assert not np.array_equal(a[0], a[1])


def test_training_on_mock_data_lowers_the_loss(mnist_dir, monkeypatch):
    monkeypatch.setattr(data_lib, "network_available", lambda *a, **k: True)
    # pixels in 0..50: sparse binary images, learnable (uniform noise would be at its optimum)
    with tfds.testing.mock_data(num_examples=64, max_value=50, data_dir=mnist_dir):
        data = ImageData(DataConfig(data_dir=mnist_dir), "train", training=True)
        batches = list(data.dataset(32, steps=2))
    keras.utils.set_random_seed(0)  # the initial weights
    model = vae.build(vae.small(), data.spec, 1e-2)
    model.build_for_training(batches[0])
    step = tf.function(model.train_step)
    losses = []
    for epoch in range(8):
        for m in model.metrics:
            m.reset_state()
        for i, b in enumerate(batches):
            logs = step(dict(b, seed=tf.constant([epoch, i])))
        losses.append(float(logs["loss"]))
    assert losses[-1] < losses[0] - 100.0, losses


def test_the_end_of_run_bound_sizes_its_batch_from_a_memory_budget():
    binary = vae.VAE(DataSpec((28, 28, 1), "binary_static", 10), vae.Config())
    eight_bit = vae.VAE(DataSpec((28, 28, 1), "uint8", 10), vae.Config())
    assert evaluation.batch_size_for(binary) == evaluation.DEFAULT_BATCH
    batch = evaluation.batch_size_for(eight_bit)
    # chunk 100 x 784 pixels x 256 logits x 4 bytes x 4 temporaries per example
    assert batch == evaluation.MEMORY_BUDGET // (100 * 784 * 256 * 16)
    assert batch * eight_bit.eval_bytes_per_example() <= evaluation.MEMORY_BUDGET < 8 * 2**30
