"""Every family as a plain Keras model: models.build -> compile -> fit -> evaluate -> .keras.

The README's "From Python" snippet, run per family on a real MNIST slice with small configs.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from gen_keras import callbacks, data, models
from gen_keras.config import UsageError

MODES = {"gan": "float_symmetric", "classifier": "float", "autoencoder": "binary_static"}
# A comparison of the loaded model with the original on the same inputs, per family.
OUTPUTS = {
    "vae": lambda m, x: m(x),
    "autoencoder": lambda m, x: m(x),
    "classifier": lambda m, x: m(x),
    "gan": lambda m, x: m.sample(tf.constant([[1, 2], [3, 4]])),
    "pixelcnn": lambda m, x: m.log_prob(x),
    "pixelrnn": lambda m, x: m.log_prob(x),
    "semisupervised": lambda m, x: m(x),
}


def _sample(model, seeds):
    return tf.function(model.sample)(seeds)


def _load(mnist_dir, family, split):
    mode = MODES.get(family, "binary_static")
    return data.load("mnist", split=split, binarization=mode, data_dir=mnist_dir, download=False)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_the_keras_workflow_runs_for_every_family(family, mnist_dir, tmp_path, recwarn):
    train = _load(mnist_dir, family, "train[:96]")
    test = _load(mnist_dir, family, "test[:40]")
    keras.utils.set_random_seed(3)
    model = models.build(family, config="small", spec=train.spec)
    history = model.fit(train.dataset(batch_size=32), epochs=2, verbose=0)
    # The dataset shuffles itself: fit does not ask Keras to (which warns that it cannot).
    assert not [w for w in recwarn if "shuffle" in str(w.message)], [
        str(w.message) for w in recwarn
    ]
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    evaluated = model.evaluate(test.dataset(batch_size=16), return_dict=True, verbose=0)
    assert set(evaluated) == set(history.history) and np.isfinite(evaluated["loss"])
    for optimizer, _ in model.optimizer_variables():
        assert int(optimizer.iterations) == 6  # 96 images / 32 per batch x 2 epochs

    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    assert type(again) is type(model) and again.config == model.config
    x = next(iter(test.dataset(4)))["image"]
    np.testing.assert_array_equal(OUTPUTS[family](again, x), OUTPUTS[family](model, x))
    if family in ("vae", "pixelcnn"):  # pixelrnn: below; gan: in OUTPUTS
        seeds = tf.constant([[5, 6], [7, 8]])
        np.testing.assert_array_equal(_sample(again, seeds), _sample(model, seeds))
    pairs = zip(model.optimizer_variables(), again.optimizer_variables(), strict=True)
    for (a, _), (b, _) in pairs:
        assert int(a.iterations) == int(b.iterations)
        for va, vb in zip(a.variables, b.variables, strict=True):
            np.testing.assert_array_equal(va, vb)
    again.fit(train.dataset(batch_size=32), epochs=1, verbose=0)  # training goes on


def test_a_loaded_pixelrnn_samples_the_same_images(mnist_dir, tmp_path):
    train = _load(mnist_dir, "pixelrnn", "train[:32]")
    keras.utils.set_random_seed(4)
    model = models.build("pixelrnn", "small", spec=train.spec)
    model.fit(train.dataset(batch_size=32), epochs=1, verbose=0)
    model.save(str(tmp_path / "p.keras"))
    again = keras.models.load_model(str(tmp_path / "p.keras"))
    seeds = tf.constant([[5, 6]])
    np.testing.assert_array_equal(_sample(again, seeds), _sample(model, seeds))


@pytest.mark.parametrize("family", ["vae", "pixelcnn"])
def test_eager_and_compiled_fit_take_the_same_steps(family, mnist_dir):
    train = _load(mnist_dir, family, "train[:64]")
    losses = []
    for eager in (False, True):
        keras.utils.set_random_seed(5)
        model = models.build(family, "small", spec=train.spec)
        model.compile(run_eagerly=eager)
        losses.append(model.fit(train.dataset(batch_size=32), epochs=1, verbose=0).history)
    np.testing.assert_allclose(losses[0]["loss"], losses[1]["loss"], rtol=1e-4)


def test_fit_without_seeds_draws_them_from_the_model_seed_generator(mnist_dir):
    train = _load(mnist_dir, "vae", "train[:64]")
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(6)
        model = models.build("vae", "small", spec=train.spec)
        before = np.array(model.seed_generator.state)
        runs.append(model.fit(train.dataset(batch_size=32), epochs=1, verbose=0).history["loss"])
        assert not np.array_equal(before, model.seed_generator.state)  # advanced per step
    assert runs[0] == runs[1]  # seeded weights and seed generator: the same run twice


def test_the_pictures_callback_writes_tensorboard_images_and_pngs_under_fit(mnist_dir, tmp_path):
    train = _load(mnist_dir, "pixelcnn", "train[:32]")
    keras.utils.set_random_seed(7)
    model = models.build("pixelcnn", "small", spec=train.spec)
    pictures = callbacks.Pictures(
        str(tmp_path / "tb"), _load(mnist_dir, "pixelcnn", "test[:8]"), 4, png_dir=str(tmp_path)
    )
    model.fit(train.dataset(batch_size=32), epochs=2, verbose=0, callbacks=[pictures])
    files = os.listdir(tmp_path / "tb")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb" / files[0]), size_guidance={})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert {"samples", "completions"} <= set(tags)
    assert [e.step for e in acc.Tensors("samples")] == [1, 2]
    assert sorted(os.listdir(tmp_path / "samples")) == ["epoch_0001.png", "epoch_0002.png"]


def test_build_names_the_presets_and_needs_a_spec(mnist_dir):
    spec = _load(mnist_dir, "vae", "test[:8]").spec
    with pytest.raises(UsageError, match="not a preset of vae"):
        models.build("vae", "huge", spec=spec)
    with pytest.raises(UsageError, match="spec= is required"):
        models.build("vae", "small", spec=None)
    with pytest.raises(UsageError, match="not one of"):
        models.build("flow", "small", spec=spec)
    assert models.build("vae", models.vae.small(), spec=spec).config == models.vae.small()
