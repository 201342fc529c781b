"""Shared fixtures: real MNIST slices from ../shared, a small trained VAE run and its export."""

import os

import gen_keras  # noqa: F401  (before TensorFlow loads: its oneDNN default)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

from gen_keras import data as data_lib  # noqa: E402
from gen_keras.config import DataConfig, TrainConfig  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from one seed (weights built without an explicit seed included), so
    the suite gives the same verdict on any machine and in any order."""
    keras.utils.set_random_seed(0)


def shared_tfds_dir() -> str:
    for d in data_lib.SHARED_DATA_DIRS:
        if (d / "mnist").is_dir():
            return str(d)
    pytest.fail("../shared/tensorflow_datasets/mnist is missing: the tests need it beside the repo")


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    return shared_tfds_dir()


@pytest.fixture(scope="session")
def mnist_idx_dir() -> str:
    d = REPO.parent / "shared" / "data" / "mnist"
    if not (d / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"{d} is missing the MNIST IDX files")
    return str(d)


def small_data(mnist_dir, **kw) -> DataConfig:
    return DataConfig(
        data_dir=mnist_dir, train_split="train[:512]", eval_split="test[:256]", download=False, **kw
    )


def small_train(tmp_path, **kw) -> TrainConfig:
    fields = dict(
        batch_size=32,
        epochs=2,
        steps_per_epoch=6,
        learning_rate=3e-3,
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
        log_every_steps=2,
        num_summary_images=8,
    )
    fields.update(kw)
    return TrainConfig(**fields)


@pytest.fixture(scope="session")
def vae_run(mnist_dir, tmp_path_factory):
    """A small VAE trained for 12 steps on real binarized MNIST and exported."""
    from gen_keras import train
    from gen_keras.models import vae

    tmp = tmp_path_factory.mktemp("vae_run")
    return train.fit("vae", vae.small(), small_data(mnist_dir), small_train(tmp), verbose=0)


@pytest.fixture(scope="session")
def mnist_classifier(mnist_dir, tmp_path_factory):
    """The small classifier convnet trained for 60 steps on 2048 real 8-bit MNIST digits and
    exported: the feature network of the sample-quality tests (FID, KID, coverage)."""
    import dataclasses

    from gen_keras import train
    from gen_keras.models import classifier

    tmp = tmp_path_factory.mktemp("mnist_classifier")
    data = dataclasses.replace(
        small_data(mnist_dir, binarization="float"), train_split="train[:2048]"
    )
    cfg = small_train(tmp, batch_size=64, epochs=1, steps_per_epoch=60, learning_rate=3e-3)
    return train.fit("classifier", classifier.small(), data, cfg, verbose=0)
