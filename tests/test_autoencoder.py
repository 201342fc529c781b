"""Autoencoder: shapes and parameter count, the loss of each data mode, corruption, training
on mock data, TensorBoard reconstruction grids, and the export through the TF1 loader."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing import event_accumulator as ea

from gen_keras import data as data_lib
from gen_keras import train
from gen_keras.config import DataConfig, UsageError
from gen_keras.data import DataSpec, ImageData
from gen_keras.models import autoencoder
from tests.conftest import small_data, small_train
from tests.test_export import Served

SPEC = DataSpec((8, 12, 1), "binary_static", 10)  # distinct sizes: a swapped axis fails


def _batch(spec=SPEC, n=3, seed=0):
    u = tf.random.stateless_uniform([n, *spec.shape], [seed, 1])
    if spec.binary:
        x = tf.cast(u < 0.3, tf.float32)
    elif spec.mode == "uint8":
        x = tf.floor(u * 256.0)
    else:
        x = u if spec.mode == "float" else u * 2.0 - 1.0
    return {"image": x, "label": tf.zeros([n], tf.int32), "seed": tf.constant([seed, 2])}


def _model(config=None, spec=SPEC):
    model = autoencoder.build(config or autoencoder.small(), spec, 1e-2)
    model.build_for_training(_batch(spec))
    return model


def test_shapes_and_parameter_count():
    model = _model()  # hidden 8, latent 4
    x = _batch()["image"]
    z = model.encode(x)
    assert z.shape == (3, 4)
    assert model.decode_params(z).shape == (3, 8, 12, 1)
    assert model(x).shape == (3, 8, 12, 1)
    # encoder: conv_1 9*8+8, conv_2 9*8*16+16 (-> 2x3x16), code 96*4+4;
    # decoder: dense 4*96+96, convT 16*16*8+8, convT 16*8*1+1
    assert model.count_params() == 80 + 1168 + 388 + 480 + 2056 + 129


@pytest.mark.parametrize(
    "mode, loss, params, trackers",
    [
        ("binary_static", "bernoulli", 1, {"loss", "mse", "distortion", "bits_per_dim"}),
        ("uint8", "categorical", 256, {"loss", "mse", "distortion", "bits_per_dim"}),
        ("float", "mse", 1, {"loss", "mse"}),
        ("float_symmetric", "mse", 1, {"loss", "mse"}),
    ],
)
def test_the_loss_matches_the_data_mode(mode, loss, params, trackers):
    spec = DataSpec((8, 12, 1), mode, 10)
    model = _model(spec=spec)
    assert model.loss_name == loss
    x = _batch(spec)["image"]
    assert model.decode_params(model.encode(x)).shape == (3, 8, 12, params)
    logs = model.test_step(_batch(spec))
    assert set(logs) == trackers and all(math.isfinite(float(v)) for v in logs.values())
    terms = model.terms(x, x)
    if loss == "bernoulli":
        logits = model.decode_params(model.encode(x))
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)
        np.testing.assert_allclose(terms["loss"], tf.reduce_sum(bce, [1, 2, 3]), rtol=1e-5)
    if loss == "mse":
        unit = model.to_unit(x)
        expect = tf.reduce_mean(tf.square(model.to_unit(model(x)) - unit), [1, 2, 3])
        np.testing.assert_allclose(terms["loss"], expect, rtol=1e-5)
        lo, hi = (0.0, 1.0) if mode == "float" else (-1.0, 1.0)
        assert lo <= float(tf.reduce_min(model(x))) <= float(tf.reduce_max(model(x))) <= hi


def test_losses_that_do_not_fit_the_data_are_refused():
    with pytest.raises(UsageError, match="loss='categorical' does not fit"):
        autoencoder.build(autoencoder.Config(loss="categorical"), SPEC, 1e-3)
    with pytest.raises(UsageError, match="loss='bernoulli' does not fit"):
        autoencoder.build(autoencoder.Config(loss="bernoulli"), DataSpec((8, 8, 1), "float", 10), 1)
    with pytest.raises(UsageError, match="divisible by 4"):
        autoencoder.build(autoencoder.small(), DataSpec((5, 7, 1), "float", 10), 1e-3)
    with pytest.raises(UsageError, match="noise_level < 1"):
        autoencoder.Config(corruption="mask", noise_level=1.0)


def test_corruption_is_seeded_and_of_the_stated_kind():
    spec = DataSpec((8, 12, 1), "float", 10)
    x = tf.ones([64, 8, 12, 1])
    mask = _model(
        autoencoder.Config(latent_dim=4, hidden=8, corruption="mask", noise_level=0.3), spec
    )
    a, b = mask.corrupt(x, tf.constant([1, 2])), mask.corrupt(x, tf.constant([1, 2]))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 1.0}
    assert abs(float(tf.reduce_mean(1.0 - a)) - 0.3) < 0.03  # 6144 pixels
    assert not np.array_equal(a, mask.corrupt(x, tf.constant([1, 3])))
    gauss = _model(autoencoder.Config(latent_dim=4, hidden=8, corruption="gaussian"), spec)
    noise = gauss.corrupt(x, tf.constant([1, 2])) - x
    assert abs(float(tf.math.reduce_std(noise)) - 0.25) < 0.02
    plain = _model(spec=spec)
    np.testing.assert_array_equal(plain.corrupt(x, tf.constant([1, 2])), x)


def test_masking_in_float_symmetric_space_sets_pixels_to_black():
    spec = DataSpec((8, 12, 1), "float_symmetric", 10)
    model = _model(autoencoder.Config(latent_dim=4, hidden=8, corruption="mask"), spec)
    y = model.corrupt(tf.ones([3, 8, 12, 1]), tf.constant([0, 1]))
    assert set(np.unique(y)) == {-1.0, 1.0}


def test_reconstruction_loss_falls_on_mock_data(mnist_dir, monkeypatch):
    monkeypatch.setattr(data_lib, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=64, max_value=50, data_dir=mnist_dir):
        data = ImageData(DataConfig(data_dir=mnist_dir), "train", training=True)
        batches = list(data.dataset(32, steps=2))
    keras.utils.set_random_seed(0)  # the initial weights
    model = autoencoder.build(autoencoder.small(), data.spec, 1e-2)
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


@pytest.fixture(scope="module")
def run(mnist_dir, tmp_path_factory):
    """A small masking-noise autoencoder trained for 12 steps on real binarized MNIST."""
    tmp = tmp_path_factory.mktemp("ae_run")
    config = autoencoder.Config(latent_dim=4, hidden=8, corruption="mask")
    return train.fit("autoencoder", config, small_data(mnist_dir), small_train(tmp), verbose=0)


def test_tensorboard_has_reconstruction_and_denoising_grids(run):
    acc = ea.EventAccumulator(os.path.join(run.model_dir, "eval"), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    for name in ("loss", "mse", "distortion", "reconstructions", "denoising"):
        assert [e.step for e in acc.Tensors(name)] == [6, 12], name
    assert [e.step for e in acc.Tensors("final/mse")] == [12]
    width, height = tf.make_ndarray(acc.Tensors("reconstructions")[-1].tensor_proto)[:2]
    assert (int(width), int(height)) == (88, 88)  # 4 (input, reconstruction) pairs: 3x3 grid
    width, height = tf.make_ndarray(acc.Tensors("denoising")[-1].tensor_proto)[:2]
    assert (int(width), int(height)) == (117, 88)  # 4 triples: 12 images, 4 columns x 3 rows
    assert "samples" not in tags
    loss = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    assert loss[1] < loss[0]


def test_export_round_trip(run):
    served = Served(run.export_path)
    try:
        assert {"serving_default", "reconstruct", "encode", "decode"} <= set(served.signatures)
        assert set(served.signatures["encode"].outputs) == {"z"}
        assert set(served.signatures["serving_default"].inputs) == {"images"}
        images = np.zeros([3, 28, 28, 1], np.uint8)
        images[:, 8:20, 12:16] = 1
        images[1, 4:24, 4:8] = 1
        z = served("encode", images=images)["z"]
        assert z.shape == (3, 4) and z.dtype == np.float32
        np.testing.assert_allclose(z, run.model.encode(tf.constant(images, tf.float32)), atol=1e-5)
        dec = served("decode", z=z)["images"]
        rec = served("reconstruct", images=images)["images"]
        assert rec.shape == (3, 28, 28, 1) and rec.dtype == np.uint8
        assert set(np.unique(rec)) <= {0, 1}
        np.testing.assert_array_equal(dec, rec)  # reconstruct = decode(encode(images))
        expect = tf.round(run.model(tf.constant(images, tf.float32)))
        np.testing.assert_array_equal(rec, expect.numpy().astype(np.uint8))
        with pytest.raises(tf.errors.InvalidArgumentError, match="pixel values must be in 0..1"):
            served("encode", images=np.full([2, 28, 28, 1], 2, np.uint8))
        with pytest.raises(tf.errors.InvalidArgumentError, match="z: must be finite"):
            served("decode", z=np.full([1, 4], np.inf, np.float32))
    finally:
        served.close()


def test_a_2d_trainer_run_writes_the_latent_pictures(mnist_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.autoencoder",
            "--config=small",
            "--latent_dim=2",
            f"--data_dir={mnist_dir}",
            "--train_split=train[:256]",
            "--eval_split=test[:100]",
            "--batch_size=32",
            "--epochs=1",
            "--steps_per_epoch=4",
            "--noexport",
            f"--model_dir={tmp_path}/run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final: mse=" in result.stdout and "pictures:" in result.stdout
    shapes = {
        "scatter": (560, 640, 3),
        "manifold": (20 * 29 + 1, 20 * 29 + 1, 1),
        "interpolation": (8 * 29 + 1, 12 * 29 + 1, 1),
    }
    for name, shape in shapes.items():
        png = tf.io.decode_png(tf.io.read_file(f"{tmp_path}/run/pictures/{name}.png"))
        assert png.shape == shape, name
    assert os.path.isfile(f"{tmp_path}/run/eval/projector_config.pbtxt")
    z = np.loadtxt(f"{tmp_path}/run/eval/latents/z.tsv")
    assert z.shape == (100, 2)
