"""Encoder transfer into classifiers, and the latent pictures (scatter, manifold, strips,
projector data), down to the pixels and the TensorBoard projector endpoints."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from gen_keras import pictures, transfer
from gen_keras.config import UsageError
from gen_keras.data import DataSpec, ImageData
from gen_keras.models import autoencoder, classifier, vae
from tests.conftest import REPO, small_data

SPEC = DataSpec((8, 12, 1), "binary_static", 10)  # distinct sizes: a swapped axis fails


def _x(n=3, spec=SPEC):
    return tf.cast(tf.random.stateless_uniform([n, *spec.shape], [3, 1]) < 0.3, tf.float32)


def _built(module, config, spec=SPEC):
    model = module.build(config, spec, 1e-3)
    model.build_for_training({"image": _x(2, spec), "label": tf.zeros([2], tf.int32)})
    return model


# -- transfer -------------------------------------------------------------------------------


def test_autoencoder_encoder_initialises_the_classifier_trunk():
    ae = _built(autoencoder, autoencoder.small())  # hidden 8, latent 4
    clf = _built(classifier, classifier.probe(latent_dim=4, filters=8))
    before = [w.numpy().copy() for w in clf.trunk.weights]
    transfer.init_from_encoder(clf, ae)
    trunk = [layer for layer in clf.trunk.layers if layer.weights]
    encoder = [layer for layer in ae.encoder.layers if layer.weights]
    assert [layer.name for layer in trunk] == ["conv_1", "conv_2", "code"]
    for mine, theirs in zip(trunk, encoder, strict=True):
        for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(before[0], clf.trunk.weights[0].numpy())
    np.testing.assert_allclose(clf.features(_x()), ae.encode(_x()), rtol=1e-6)


def test_vae_posterior_mean_path_initialises_the_classifier_trunk():
    model = _built(vae, vae.Config(latent_dim=4, hidden=8))
    clf = _built(classifier, classifier.probe(latent_dim=4, filters=8))
    transfer.init_from_encoder(clf, model)
    convs = [layer for layer in model.encoder.layers if layer.weights]
    trunk = [layer for layer in clf.trunk.layers if layer.weights]
    for mine, theirs in zip(trunk[:2], convs, strict=True):
        for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    kernel, bias = model.posterior_params.get_weights()
    np.testing.assert_array_equal(trunk[2].get_weights()[0], kernel[:, :4])
    np.testing.assert_array_equal(trunk[2].get_weights()[1], bias[:4])
    mean = model.posterior(_x()).mean()
    np.testing.assert_allclose(clf.features(_x()), mean, rtol=1e-5, atol=1e-6)


def test_encoders_that_do_not_fit_are_refused():
    ae = _built(autoencoder, autoencoder.small())
    with pytest.raises(UsageError, match="do not fit the classifier"):
        transfer.init_from_encoder(_built(classifier, classifier.probe(4, 4)), ae)
    with pytest.raises(UsageError, match="arch='encoder'"):
        transfer.init_from_encoder(_built(classifier, classifier.small()), ae)
    with pytest.raises(UsageError, match="unconditional conv VAE"):
        mlp = _built(vae, vae.Config(arch="mlp", latent_dim=4, hidden=8))
        transfer.init_from_encoder(_built(classifier, classifier.probe(4, 8)), mlp)


def test_a_classifier_warm_started_from_a_run_starts_from_its_encoder(vae_run):
    spec = vae_run.model.spec
    clf = classifier.build(classifier.probe(4, 8, init_from=vae_run.model_dir), spec, 1e-3)
    transfer.warm_start(clf)
    x = tf.cast(tf.random.stateless_uniform([3, *spec.shape], [1, 1]) < 0.2, tf.float32)
    mean = vae_run.model.posterior(x).mean()
    np.testing.assert_allclose(clf.features(x), mean, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="not a gen_keras run"):
        transfer.warm_start(
            classifier.build(classifier.probe(4, 8, init_from="/nonexistent"), spec, 1e-3)
        )


# -- pictures -------------------------------------------------------------------------------


def test_scatter_puts_each_point_in_its_colour_where_it_belongs():
    z = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    image = pictures.scatter(z, np.array([0, 1, 2]), size=100)
    assert image.shape == (20 + 100 + 60, 70 + 100 + 90, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, pictures.scatter(z, np.array([0, 1, 2]), size=100))
    # padding 4% of the range on each side: 0 -> pixel 70 + 0.04/1.08 * 99 = 73.7 -> 74
    lo_x, hi_x = 70 + round(0.04 / 1.08 * 99), 70 + round(1.04 / 1.08 * 99)
    lo_y, hi_y = 20 + round(1.04 / 1.08 * 99), 20 + round(0.04 / 1.08 * 99)
    np.testing.assert_array_equal(image[lo_y, lo_x], pictures.PALETTE[0])
    np.testing.assert_array_equal(image[hi_y, hi_x], pictures.PALETTE[1])
    np.testing.assert_array_equal(image[hi_y, lo_x], pictures.PALETTE[2])
    np.testing.assert_array_equal(image[lo_y, hi_x], [255, 255, 255])  # no point there


def test_nice_ticks_and_principal_components():
    np.testing.assert_allclose(pictures.nice_ticks(0.0, 1.0), [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(pictures.nice_ticks(-13.2, 7.0), [-10, -5, 0, 5])
    line = np.outer(np.linspace(-1, 1, 50), [1.0, 2.0, 0.0, -1.0, 3.0]) + 4.0
    pc = pictures.principal_2d(line)
    assert pc.shape == (50, 2) and np.abs(pc[:, 1]).max() < 1e-6
    np.testing.assert_allclose(np.abs(pc[:, 0]), np.abs(np.linspace(-1, 1, 50)) * np.sqrt(15))


def test_manifold_and_interpolation_decode_the_right_codes():
    ae = _built(autoencoder, autoencoder.Config(latent_dim=2, hidden=8))
    latent = pictures.Latent(ae)
    grid = pictures.manifold(latent, np.array([-1.0, -2.0]), np.array([1.0, 2.0]), n=3)
    assert grid.shape == (9, 8, 12, 1) and 0.0 <= grid.min() <= grid.max() <= 1.0
    np.testing.assert_allclose(grid[4], ae.decode(tf.zeros([1, 2]))[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid[2], ae.decode(tf.constant([[1.0, 2.0]]))[0], atol=1e-6)
    x_a, x_b = _x(2), 1.0 - _x(2)
    strips = pictures.interpolations(latent, x_a, x_b, steps=4)
    assert strips.shape == (2, 6, 8, 12, 1)
    np.testing.assert_array_equal(strips[:, 0], x_a)
    np.testing.assert_array_equal(strips[:, -1], x_b)
    np.testing.assert_allclose(strips[:, 1], ae(x_a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(strips[:, 4], ae(x_b), rtol=1e-5, atol=1e-6)
    mid = ae.decode((2 * ae.encode(x_a) + ae.encode(x_b)) / 3.0)
    np.testing.assert_allclose(strips[:, 2], mid, rtol=1e-4, atol=1e-5)
    with pytest.raises(UsageError, match="latent_dim=2"):
        pictures.manifold(pictures.Latent(_built(autoencoder, autoencoder.small())), [0, 0], [1, 1])


def test_sprite_layout():
    images = np.stack([np.full((2, 3, 1), i / 10.0) for i in range(5)])
    s = pictures.sprite(images)
    assert s.shape == (4, 9, 1)  # 3 columns, 2 rows
    assert s[2, 3, 0] == round(0.4 * 255) and s[0, 6, 0] == round(0.2 * 255) and s[2, 6, 0] == 0


@pytest.fixture(scope="module")
def eval_data(mnist_dir):
    config = small_data(mnist_dir)
    return ImageData(config, "test[:200]", training=False)


def test_write_all_for_a_2d_vae_and_a_16d_autoencoder(eval_data, tmp_path):
    spec = eval_data.spec
    vae2 = _built(vae, vae.Config(latent_dim=2, hidden=8), spec)
    paths = pictures.write_all(vae2, eval_data, str(tmp_path / "vae"), pairs=3)
    assert set(paths) == {"scatter", "manifold", "interpolation"}
    manifold = tf.io.decode_png(tf.io.read_file(paths["manifold"]))
    assert manifold.shape == (20 * 29 + 1, 20 * 29 + 1, 1)
    strip = tf.io.decode_png(tf.io.read_file(paths["interpolation"]))
    assert strip.shape == (3 * 29 + 1, 12 * 29 + 1, 1)
    ae16 = _built(autoencoder, autoencoder.Config(latent_dim=16, hidden=8), spec)
    paths = pictures.write_all(ae16, eval_data, str(tmp_path / "ae"))
    assert set(paths) == {"scatter", "interpolation"}  # no manifold for 16 dimensions
    scatter = tf.io.decode_png(tf.io.read_file(paths["scatter"]))
    assert scatter.shape == (560, 640, 3)
    with pytest.raises(UsageError, match="need an autoencoder or VAE"):
        pictures.write_all(_built(classifier, classifier.small(), spec), eval_data, str(tmp_path))


def test_projector_data_is_served_by_tensorboard(vae_run, mnist_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(vae_run.model_dir, run_dir)
    result = subprocess.run(
        [sys.executable, "-m", "trainers.pictures", f"--model_dir={run_dir}", "--pairs=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scatter.png" in result.stdout and "manifold" not in result.stdout  # latent_dim 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [exe, "--logdir", run_dir, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data/plugin/projector"
    try:
        deadline, runs = time.time() + 90, []
        while time.time() < deadline and "eval" not in runs:
            try:
                runs = json.load(urllib.request.urlopen(f"{base}/runs", timeout=5))
            except OSError:
                time.sleep(1)
        assert "eval" in runs, runs
        info = json.load(urllib.request.urlopen(f"{base}/info?run=eval", timeout=10))
        (embedding,) = info["embeddings"]
        assert embedding["tensorName"] == "latent_z" and embedding["tensorShape"] == [256, 4]
        meta = urllib.request.urlopen(
            f"{base}/metadata?run=eval&name=latent_z&num_rows=300", timeout=10
        ).read()
        labels = [int(v) for v in meta.decode().split()]
        assert len(labels) == 256 and set(labels) <= set(range(10))
        tensor = urllib.request.urlopen(f"{base}/tensor?run=eval&name=latent_z", timeout=10)
        z = np.frombuffer(tensor.read(), np.float32).reshape(256, 4)
        data = ImageData(small_data(mnist_dir), "test[:256]", training=False)
        x = next(iter(data.dataset(256)))["image"]
        np.testing.assert_allclose(z, vae_run.model.posterior(x).mean(), rtol=1e-4, atol=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_benchmark_label_subsets_are_balanced_seeded_and_the_trainers_draw():
    from benchmarks.features import label_subset
    from gen_keras.data import labeled_subset

    labels = np.repeat(np.arange(10), 50)[np.random.default_rng(0).permutation(500)]
    a = label_subset(labels, 7, seed=1)
    assert len(a) == 70 and len(set(a)) == 70
    assert np.array_equal(np.bincount(labels[a], minlength=10), np.full(10, 7))
    np.testing.assert_array_equal(a, label_subset(labels, 7, seed=1))
    np.testing.assert_array_equal(np.sort(a), labeled_subset(labels, 7, seed=1))
    assert not np.array_equal(np.sort(a), np.sort(label_subset(labels, 7, seed=2)))
    assert sorted(label_subset(labels, None, seed=0)) == list(range(500))


def _semisupervised_run(
    path, data_config, method, seed, test_split="test", finished=True, per_class=5
):
    """A run dir as trainers.semisupervised leaves it: config, labeled record, metrics."""
    from gen_keras import semisupervised
    from gen_keras.models import semisupervised as model_lib

    config = model_lib.Config(method=method, labels_per_class=per_class, label_seed=seed)
    data = semisupervised.labeled_data(config, data_config)
    semisupervised.record_labeled(str(path), data, data_config.train_split, seed)
    with open(path / "config.json", "w") as f:
        json.dump({"model": dataclasses.asdict(config)}, f)
    if finished:
        test = {"accuracy": 0.5 + seed / 10, "errors": 1, "split": test_split}
        with open(path / "metrics.json", "w") as f:
            json.dump({"step": 3, "test": test}, f)


def test_semisupervised_runs_join_the_table_only_with_the_same_labeled_images(mnist_dir, tmp_path):
    from benchmarks.features import SEMISUPERVISED, load, semisupervised_rows, table

    data_config = small_data(mnist_dir)  # train[:512]
    labels = load(data_config.train_split, mnist_dir)[1]
    for name, method, seed in [("m2_s0", "m2", 0), ("m2_s1", "m2", 1), ("sup_s0", "supervised", 0)]:
        _semisupervised_run(tmp_path / name, data_config, method, seed)
    _semisupervised_run(tmp_path / "m2_s2", data_config, "m2", 2, finished=False)
    rows, unfinished = semisupervised_rows(
        [str(tmp_path / "*")], labels, data_config.train_split, "test"
    )
    assert unfinished == [str(tmp_path / "m2_s2")]
    assert sorted((r["method"], r["seed"], r["accuracy"]) for r in rows) == [
        ("m2", 0, 0.5),
        ("m2", 1, 0.6),
        ("supervised", 0, 0.5),
    ]
    columns = [(SEMISUPERVISED[m], m, "none") for m in ("m2", "supervised", "m1m2")]
    assert table(rows, [5], columns).splitlines()[2] == (
        "| 5 | 55.00 ± 5.00 (50.00-60.00, n=2) | 50.00 ± 0.00 (50.00-50.00, n=1) | not run |"
    )
    # another draw than this benchmark's for the seed, another test split, the same run twice
    record = tmp_path / "m2_s1" / "labeled_examples.json"
    good = record.read_text()
    record.write_text(good.replace('"label_seed": 1', '"label_seed": 0').replace("[", "[0, ", 1))
    with pytest.raises(UsageError, match="m2_s1: its labeled images .* are not the ones"):
        semisupervised_rows([str(tmp_path / "m2_s1")], labels, data_config.train_split, "test")
    record.write_text(good)
    with pytest.raises(UsageError, match="are not the ones this benchmark draws"):
        semisupervised_rows([str(tmp_path / "m2_s1")], labels, "train[:256]", "test")
    with pytest.raises(UsageError, match="not --test_split='test\\[:100\\]'"):
        semisupervised_rows(
            [str(tmp_path / "m2_s1")], labels, data_config.train_split, "test[:100]"
        )
    shutil.copytree(tmp_path / "m2_s1", tmp_path / "again")
    with pytest.raises(UsageError, match="are both m2 at 5/class, seed 1"):
        semisupervised_rows([str(tmp_path / "*")], labels, data_config.train_split, "test")
    with pytest.raises(UsageError, match="matches no directory"):
        semisupervised_rows([str(tmp_path / "nothing*")], labels, data_config.train_split, "test")


def test_the_features_benchmark_runs_end_to_end_and_merges_a_run(mnist_dir, tmp_path):
    """The whole script on tiny budgets: pretraining, restore, every method, the merged
    column (it was once broken by a renamed loader with nothing to notice)."""
    data = small_data(mnist_dir)
    _semisupervised_run(tmp_path / "m2_s0", data, "m2", 0, test_split="test[:100]", per_class=10)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.features",
            f"--out={tmp_path / 'out'}",
            f"--data_dir={mnist_dir}",
            "--labels=10",
            "--seeds=1",
            "--train_split=train[:512]",
            "--val_split=test[:64]",
            "--pretrain_epochs=1",
            "--steps_scale=0.01",
            "--test_split=test[:100]",
            "--latent_dim=4",
            f"--semisupervised_runs={tmp_path}/m2_*",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted({(r["method"], r["encoder"]) for r in rows}) == [
        ("finetune", "autoencoder"),
        ("finetune", "vae"),
        ("m2", "none"),
        ("probe", "autoencoder"),
        ("probe", "vae"),
        ("random", "none"),
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    header = next(line for line in result.stdout.splitlines() if line.startswith("| labels"))
    assert header.endswith("| finetune (vae) | M2 |")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.features",
            f"--out={tmp_path / 'out'}",
            f"--data_dir={mnist_dir}",
            "--train_split=train[:512]",
            "--labels=10,7",
            "--semisupervised_runs=/nonexistent/*",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: --labels=10,7: each must be one of 10, 100, 1000, full"
    )
