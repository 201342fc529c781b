"""Data modes, seeded pipelines, resumable epochs, IDX building and offline errors."""

import dataclasses
import gzip
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from gen_keras import data as data_lib
from gen_keras import models
from gen_keras.config import DataConfig, UsageError
from gen_keras.data import DataSpec, ImageData
from gen_keras.models import pixelcnn
from tests.conftest import small_data


def _images(ds):
    return np.concatenate([b["image"].numpy() for b in ds])


@pytest.mark.parametrize(
    "mode, values",
    [
        ("binary_static", {0.0, 1.0}),
        ("binary_dynamic", {0.0, 1.0}),
        ("binary_threshold", {0.0, 1.0}),
    ],
)
def test_binary_modes_give_zeros_and_ones(mnist_dir, mode, values):
    data = ImageData(small_data(mnist_dir, binarization=mode), "train[:64]", training=True)
    batch = next(iter(data.dataset(16)))
    assert batch["image"].shape == (16, 28, 28, 1) and batch["image"].dtype == tf.float32
    assert batch["label"].dtype == tf.int32
    assert set(np.unique(batch["image"].numpy())) == values


@pytest.mark.parametrize(
    "mode, lo, hi", [("uint8", 0.0, 255.0), ("float", 0.0, 1.0), ("float_symmetric", -1.0, 1.0)]
)
def test_continuous_modes_ranges(mnist_dir, mode, lo, hi):
    data = ImageData(small_data(mnist_dir, binarization=mode), "test[:32]", training=False)
    x = _images(data.dataset(32))
    assert x.min() == lo and x.max() == hi
    if mode == "uint8":
        np.testing.assert_array_equal(x, np.round(x))


def test_static_binarization_is_fixed_and_follows_pixel_intensity(mnist_dir):
    cfg = small_data(mnist_dir, binarization="binary_static")
    a = ImageData(cfg, "test[:200]", training=False)
    b = ImageData(cfg, "test[:200]", training=False)
    np.testing.assert_array_equal(_images(a.dataset(50)), _images(b.dataset(50)))
    raw = ImageData(small_data(mnist_dir, binarization="uint8"), "test[:200]", training=False)
    pixels = _images(raw.dataset(50)) / 255.0
    x = _images(a.dataset(50))
    assert np.all(x[pixels == 0.0] == 0.0)  # Bernoulli(0) is never 1
    assert np.all(x[pixels == 1.0] == 1.0)
    mid = (pixels > 0.3) & (pixels < 0.7)
    assert abs(x[mid].mean() - pixels[mid].mean()) < 0.05  # E[x] = pixel / 255


def test_static_draw_is_the_same_every_epoch_and_dynamic_is_not(mnist_dir):
    def by_index(mode, epoch):
        data = ImageData(small_data(mnist_dir, binarization=mode), "train[:96]", training=True)
        ds = data.dataset(32, seed=1, epoch=epoch, steps=3)
        raw = ImageData(small_data(mnist_dir, binarization="uint8"), "train[:96]", training=True)
        pix = _images(raw.dataset(32, seed=1, epoch=epoch, steps=3))
        imgs = _images(ds)
        order = np.lexsort(pix.reshape(96, -1).T)  # align both epochs by their pixels
        return imgs[order]

    np.testing.assert_array_equal(by_index("binary_static", 0), by_index("binary_static", 1))
    assert not np.array_equal(by_index("binary_dynamic", 0), by_index("binary_dynamic", 1))


def test_one_content_keyed_draw_for_training_eval_and_scoring(mnist_dir):
    """An image is binarized the same way in any split, position or batch, by the training
    pipeline, the eval pipeline and `data.binarize` (what scoring and Beam use)."""
    cfg = small_data(mnist_dir, binarization="binary_static", binarization_seed=3)
    evaluated = _images(ImageData(cfg, "test[:30]", training=False).dataset(7))
    shifted = _images(ImageData(cfg, "test[10:40]", training=False).dataset(11))
    np.testing.assert_array_equal(evaluated[10:], shifted[:20])
    raw = ImageData(small_data(mnist_dir, binarization="uint8"), "test[:30]", training=False)
    pixels = _images(raw.dataset(30)).astype(np.uint8)
    np.testing.assert_array_equal(data_lib.binarize(pixels, 3).numpy(), evaluated)
    np.testing.assert_array_equal(data_lib.binarize(pixels[5:9], 3).numpy(), evaluated[5:9])
    assert not np.array_equal(data_lib.binarize(pixels, 4).numpy(), evaluated)  # seed matters
    train_raw = ImageData(small_data(mnist_dir, binarization="uint8"), "test[:30]", True)
    shuffled = _images(train_raw.dataset(10, seed=5, steps=3)).astype(np.uint8)
    trained = _images(ImageData(cfg, "test[:30]", training=True).dataset(10, seed=5, steps=3))
    np.testing.assert_array_equal(data_lib.binarize(shuffled, 3).numpy(), trained)


def test_training_order_depends_on_seed_and_epoch_and_skip_resumes(mnist_dir):
    data = ImageData(small_data(mnist_dir, binarization="uint8"), "train[:128]", training=True)
    full = _images(data.dataset(16, seed=3, epoch=2, steps=8))
    np.testing.assert_array_equal(full, _images(data.dataset(16, seed=3, epoch=2, steps=8)))
    np.testing.assert_array_equal(
        full[5 * 16 :], _images(data.dataset(16, seed=3, epoch=2, skip=5, steps=3))
    )
    assert not np.array_equal(full, _images(data.dataset(16, seed=3, epoch=3, steps=8)))
    assert not np.array_equal(full, _images(data.dataset(16, seed=4, epoch=2, steps=8)))


def _contexts(pipelines, replicas):
    return [tf.distribute.InputContext(pipelines, i, replicas) for i in range(pipelines)]


@pytest.mark.parametrize("pipelines, replicas", [(2, 2), (1, 2), (2, 4)])
def test_replicas_get_slices_of_exactly_the_single_worker_batches(mnist_dir, pipelines, replicas):
    data = ImageData(small_data(mnist_dir, binarization="uint8"), "train[:128]", training=True)
    single = list(data.dataset(16, seed=5, epoch=1, skip=1, steps=3))
    per_pipeline = [
        list(data.dataset(16, seed=5, epoch=1, skip=1, steps=3, input_context=c))
        for c in _contexts(pipelines, replicas)
    ]
    local = replicas // pipelines
    for step, batch in enumerate(single):
        parts = [p[step * local + r] for p in per_pipeline for r in range(local)]
        assert all(part["image"].shape == (16 // replicas, 28, 28, 1) for part in parts)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])


def test_eval_slices_cover_the_split_once_with_equal_step_counts(mnist_dir):
    data = ImageData(small_data(mnist_dir, binarization="uint8"), "test[:40]", training=False)
    parts = [list(data.dataset(16, input_context=c)) for c in _contexts(2, 2)]
    assert len(parts[0]) == len(parts[1]) == 3  # the last global batch has 8: 8 + 0
    assert [int(b["image"].shape[0]) for b in parts[1]] == [8, 8, 0]
    together = np.concatenate([b["image"] for p in parts for b in p])
    np.testing.assert_array_equal(
        np.sort(together.reshape(40, -1), 0), np.sort(_images(data.dataset(16)).reshape(40, -1), 0)
    )


def test_pipelines_run_without_tf_data_autotuning(mnist_dir):
    """Autotuning's thread made each iterator's destruction wait out its sleep (16-21 s
    measured at epoch ends and after evaluations): every pipeline here turns it off."""
    train_data = ImageData(small_data(mnist_dir), "train[:64]", training=True)
    eval_data = ImageData(small_data(mnist_dir), "test[:40]", training=False)
    semi = data_lib.SemiSupervisedData.balanced(train_data, 1, seed=0, labeled_per_batch=4)
    pipelines = [
        train_data.dataset(16, seed=1, epoch=0),
        train_data.dataset(16, seed=1, epoch=0, skip=1, steps=2),
        eval_data.dataset(16),
        eval_data.dataset(16, input_context=_contexts(2, 2)[1]),
        semi.dataset(16, seed=1, steps=2),
    ]
    for ds in pipelines:
        assert ds.options().autotune.enabled is False
        assert int(next(iter(ds))["image"].shape[0]) in (8, 16)


def test_eval_keeps_order_and_partial_batch(mnist_dir):
    data = ImageData(small_data(mnist_dir), "test[:50]", training=False)
    sizes = [int(b["image"].shape[0]) for b in data.dataset(16)]
    assert sizes == [16, 16, 16, 2] and data.steps_per_epoch(16) == 4


def test_manual_dir_builds_mnist_from_idx_files(mnist_dir, mnist_idx_dir, tmp_path):
    # raw (decompressed) copies of the test files work as well as the .gz originals
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(f"{mnist_idx_dir}/{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)

    def rows(data):  # TFDS stores MNIST shuffled: compare (image, label) rows as sets
        batch = next(iter(data.dataset(10_000)))
        x = np.concatenate(
            [batch["image"].numpy().reshape(-1, 784), batch["label"].numpy()[:, None]], 1
        ).astype(np.int64)
        return x[np.lexsort(x.T)]

    tfds_data = ImageData(small_data(mnist_dir, binarization="uint8"), "test", False)
    expected = rows(tfds_data)
    for folder in (mnist_idx_dir, str(tmp_path)):
        idx = ImageData(DataConfig(manual_dir=folder, binarization="uint8"), "test", False)
        assert idx.spec == tfds_data.spec == DataSpec((28, 28, 1), "uint8", 10)
        assert idx.num_examples == 10_000
        np.testing.assert_array_equal(rows(idx), expected)
    sliced = ImageData(DataConfig(manual_dir=mnist_idx_dir), "test[:300]", training=False)
    assert sliced.num_examples == 300


def test_manual_dir_without_files_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no train-images-idx3-ubyte"):
        ImageData(DataConfig(manual_dir=str(tmp_path)), "train", training=True)


def test_missing_dataset_without_downloads_names_the_directories(tmp_path):
    cfg = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=False)
    with pytest.raises(UsageError) as e:
        ImageData(cfg, "train", training=True)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) in message and "fashion_mnist" in message


def test_missing_dataset_offline_fails_fast_instead_of_retrying(tmp_path, monkeypatch):
    monkeypatch.setattr(data_lib, "network_available", lambda *a, **k: False)
    cfg = DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path), download=True)
    with pytest.raises(UsageError, match="no network to download it"):
        ImageData(cfg, "train", training=True)


def test_network_probe_reports_an_unresolvable_host():
    assert data_lib.network_available("no-such-host.invalid", timeout=5.0) is False


def test_unknown_dataset_and_bad_split_are_usage_errors(mnist_dir):
    with pytest.raises(UsageError, match="not a TFDS dataset"):
        ImageData(DataConfig(dataset="no_such_dataset_xyz", download=False), "train", True)
    with pytest.raises(UsageError, match="not a split"):
        ImageData(small_data(mnist_dir), "validation", training=False)


def test_bad_mode_is_rejected():
    with pytest.raises(UsageError, match="binarization='gray'"):
        DataConfig(binarization="gray")


def test_spec_round_trips_between_data_and_model_space():
    pixels = tf.constant([[0, 1, 128, 255]], tf.uint8)[..., None, None]
    for mode in ("uint8", "float", "float_symmetric"):
        spec = DataSpec((1, 4, 1), mode, 10)
        np.testing.assert_array_equal(spec.to_data(spec.to_model(pixels)), pixels)
    binary = DataSpec((1, 4, 1), "binary_static", 10)
    assert binary.max_value == 1 and binary.to_data(tf.constant([0.0, 1.0])).dtype == tf.uint8


def test_mock_data_pipeline(mnist_dir, monkeypatch):
    # mock_data makes download_and_prepare a no-op; the probe must not stop it first
    monkeypatch.setattr(data_lib, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=40):
        cfg = DataConfig(binarization="float", data_dir=mnist_dir)
        data = ImageData(cfg, "train", training=True)
        batch = next(iter(data.dataset(8)))
    assert batch["image"].shape == (8, 28, 28, 1)


def test_a_dataset_without_labels_trains_unconditional_models_only(monkeypatch, tmp_path):
    # binarized_mnist (Larochelle's fixed binarization): {0, 1} pixels, no label feature.
    monkeypatch.setattr(data_lib, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=40):
        cfg = DataConfig(dataset="binarized_mnist", data_dir=str(tmp_path))
        data = ImageData(cfg, "train", training=True)
        raw = ImageData(dataclasses.replace(cfg, binarization="uint8"), "train", training=False)
        batch = next(iter(data.dataset(8, steps=1)))
        pixels = next(iter(raw.dataset(40)))["image"]
    assert data.spec.num_classes == 0 and data.spec.shape == (28, 28, 1)
    assert set(np.unique(pixels)) <= {0.0, 255.0}  # {0, 1} scaled, so binarizing keeps them
    assert set(np.unique(batch["image"])) <= {0.0, 1.0}
    assert (batch["label"].numpy() == 0).all()
    keras.utils.set_random_seed(1)
    model = models.build("pixelcnn", "small", spec=data.spec)
    logs = model.train_step(dict(batch, seed=tf.constant([1, 2])))
    assert np.isfinite(float(logs["loss"]))
    conditional = dataclasses.replace(pixelcnn.small(), conditional=True)
    with pytest.raises(UsageError, match="this dataset has none"):
        models.build("pixelcnn", conditional, spec=data.spec)
    with pytest.raises(UsageError, match="needs class labels"):
        models.build("classifier", "small", spec=dataclasses.replace(data.spec, mode="float"))
