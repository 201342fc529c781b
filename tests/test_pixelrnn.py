"""PixelRNN: shapes, causality, full receptive field, normalisation, samplers, training, export."""

import itertools
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

from gen_keras import rng, sampling, train
from gen_keras.config import UsageError
from gen_keras.data import DataSpec, ImageData
from gen_keras.models import pixelrnn
from tests.conftest import REPO, small_data, small_train
from tests.test_export import Served

ARCHS = pixelrnn.ARCHS
BINARY = DataSpec((5, 7, 1), "binary_static", 10)  # distinct sizes: a swapped axis fails
RGB = DataSpec((5, 7, 3), "uint8", 10)
RGB_TINY = DataSpec((3, 4, 3), "uint8", 10)  # 36 sub-pixels for the slow reference sampler


def _images(spec, n=3, seed=0):
    shape = [n, *spec.shape]
    if spec.binary:
        return tf.cast(tf.random.stateless_uniform(shape, [seed, 1]) < 0.4, tf.float32)
    return tf.floor(tf.random.stateless_uniform(shape, [seed, 1], maxval=256.0))


def _model(arch, spec=BINARY, scale=0.5, **overrides):
    """A small model with random weights large enough that every path carries signal."""
    config = pixelrnn.Config(**{**vars(pixelrnn.small(arch)), **overrides})
    model = pixelrnn.build(config, spec, 1e-2)
    model.build_for_training({"image": _images(spec), "label": tf.constant([1, 2, 3])})
    for k, v in enumerate(model.trainable_variables):
        v.assign(tf.random.stateless_normal(v.shape, [k, 7]) * scale)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_micro_batches_take_the_whole_batchs_step(arch):
    batch = {"image": _images(BINARY, n=4), "label": tf.zeros([4], tf.int32)}
    deltas = []
    for chunk in (0, 2):
        model = _model(arch)
        model.compile(optimizer=keras.optimizers.SGD(0.1))  # the update is the gradient
        model.build_for_training(batch)
        before = [v.numpy() for v in model.trainable_variables]
        model.micro_batch = chunk
        tf.function(model.train_step)(batch)
        after = model.trainable_variables
        deltas.append([b - v.numpy() for b, v in zip(before, after, strict=True)])
    assert max(np.abs(d).max() for d in deltas[0]) > 1e-3
    for whole, chunked in zip(*deltas, strict=True):
        np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-6)


def test_the_speed_benchmark_times_micro_batches_on_one_thread_per_op_and_refuses_misfits():
    base = [sys.executable, "-m", "benchmarks.pixelrnn", "--mode=train_speed", "--config=small"]
    flags = ["--batch_size=8", "--micro_batch=4", "--intra_op_threads=1", "--train_xla=false"]
    result = subprocess.run(
        [*base, *flags, "--steps=1"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert (line["micro_batch"], line["intra_op_threads"], line["xla"]) == (4, 1, False)
    assert line["images_per_sec"] > 0
    bad = subprocess.run(
        [*base, "--batch_size=8", "--micro_batch=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith("error: micro_batch=3 must be >= 0 and divide each replica's batch")
    ), bad.stderr[-2000:]


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_parameter_count(arch):
    model = _model(arch, layers=1, hidden=2, output_hidden=4, kernel_width=3)
    assert model.params(_images(BINARY)).shape == (3, 5, 7, 1)
    assert model.log_prob(_images(BINARY)).shape == (3,)
    # 7x7 mask A keeps 4 rows x 7 columns (3 rows + 4 columns used); 1x1 layers; 1x3 keeps 2
    first = 4 * 7 * 1 * 4 + 4
    if arch == "row_lstm":  # 1x3 input-to-state, 1x3 state-to-state
        recurrent = 2 * 4 * 8 + 8 + 6 * 8
    else:  # two 1x1 input-to-state, the right-to-left pixel input, two 2x1 state kernels
        recurrent = 2 * (4 * 8 + 8) + 1 * 8 + 2 * 4 * 8
    residual, out = 2 * 4 + 4, 4 * 4 + 4 + 4 * 1 + 1
    assert model.count_params() == first + recurrent + residual + out
    rgb = _model(arch, RGB)
    assert rgb.params(_images(RGB)).shape == (3, 5, 7, 3 * 256)
    assert rgb.head.distribution(rgb.params(_images(RGB))).event_shape == (5, 7, 3)


def test_log_prob_compiles_with_xla():
    """The layers compile on their own (test_recurrent); here the whole network."""
    model = _model("diagonal_bilstm", RGB_TINY, conditional=True)
    x, label = _images(RGB_TINY), tf.constant([1, 2, 3])
    jitted = tf.function(model.log_prob, jit_compile=True)(x, label)
    np.testing.assert_allclose(jitted, model.log_prob(x, label), rtol=1e-4)


def test_bad_configs_are_usage_errors():
    with pytest.raises(UsageError, match="arch='gru'"):
        pixelrnn.Config(arch="gru")
    with pytest.raises(UsageError, match="kernel_width=4 must be odd"):
        pixelrnn.Config(kernel_width=4)
    with pytest.raises(UsageError, match="does not fit"):
        pixelrnn.build(pixelrnn.Config(likelihood="categorical"), BINARY, 1e-3)
    with pytest.raises(UsageError, match="multiples of the 3 colour"):
        pixelrnn.build(pixelrnn.Config(hidden=8), RGB, 1e-3)


def _gradient_fn(model, size):
    """(x, i, j, start) -> |d sum(params[:, i, j, start:start + size]) / dx|, [B, H, W, C]."""

    @tf.function
    def fn(x, i, j, start):
        with tf.GradientTape() as tape:
            tape.watch(x)
            params = model.params(x, tf.constant([1, 2, 3]))[:, i, j]
            out = tf.reduce_sum(tf.slice(params, [0, start], [-1, size]))
        return tf.abs(tape.gradient(out, x))

    return lambda x, i, j, start: fn(x, tf.constant(i), tf.constant(j), tf.constant(start))


@pytest.mark.parametrize("arch, spec", itertools.product(ARCHS, [BINARY, RGB_TINY]))
def test_causality_no_gradient_from_the_current_or_later_pixels(arch, spec):
    """params of pixel (i, j), channel ch: zero gradient w.r.t. (i, j, >= ch) and later pixels."""
    model = _model(arch, spec, conditional=True)
    h, w, c = spec.shape
    per_channel = model.head.num_params(c) // c
    grad_fn = _gradient_fn(model, per_channel)
    x = _images(spec, seed=3)
    order = np.arange(h * w).reshape(h, w)[:, :, None]
    for i, j, ch in itertools.product(range(h), range(w), range(c)):
        grad = grad_fn(x, i, j, ch * per_channel).numpy().sum(0)  # [H, W, C]
        future = (order > order[i, j]) | (order == order[i, j]) & (np.arange(c) >= ch)
        assert not grad[np.broadcast_to(future, grad.shape)].any(), (i, j, ch)
    assert grad.sum() > 0  # the last sub-pixel does see its past


def test_diagonal_bilstm_receptive_field_is_the_whole_past():
    """Even one layer sees every earlier pixel (the Row LSTM's triangle would not)."""
    spec = DataSpec((8, 12, 1), "binary_static", 10)  # wider than the 7x7 conv's reach
    x = _images(spec, seed=4)
    r, c = np.meshgrid(np.arange(8), np.arange(12), indexing="ij")
    for arch in ARCHS:
        model = _model(arch, spec, layers=1)
        grad_fn = _gradient_fn(model, 1)
        for i, j in [(7, 0), (6, 11), (7, 11), (3, 5)]:
            seen = grad_fn(x, i, j, 0).numpy().sum(axis=(0, 3)) > 0
            past = (r < i) | (r == i) & (c < j)
            if arch == "diagonal_bilstm":
                np.testing.assert_array_equal(seen, past)
            elif (i, j) == (7, 0):  # Row LSTM: a triangle; (0, 11) is out of reach
                assert not seen[0, 11] and not np.array_equal(seen, past)


@pytest.mark.parametrize("arch", ARCHS)
def test_probabilities_of_all_binary_images_sum_to_one(arch):
    spec = DataSpec((3, 4, 1), "binary_static", 10)
    model = _model(arch, spec, conditional=True, scale=1.0)
    bits = np.array(list(itertools.product([0.0, 1.0], repeat=12)), np.float32)
    images = tf.constant(bits.reshape(-1, 3, 4, 1))
    log_probs = []
    for label in (0, 7):
        log_probs.append(tf.cast(model.log_prob(images, tf.fill([len(bits)], label)), tf.float64))
        total = float(tf.reduce_sum(tf.exp(log_probs[-1])))
        assert abs(total - 1.0) < 1e-4, (label, total)
    assert np.abs(log_probs[0] - log_probs[1]).max() > 0.1  # the label matters


@pytest.mark.parametrize("arch, spec", itertools.product(ARCHS, [BINARY, RGB_TINY]))
def test_cached_stepper_reproduces_the_network_on_a_given_image(arch, spec):
    """Teacher-forced on a fixed image, the per-pixel params equal the whole-image pass."""
    model = _model(arch, spec, conditional=True)
    x, label = _images(spec, seed=6), tf.constant([4, 0, 9])
    stepper = pixelrnn.CachedStepper(model, label)
    state = stepper.init(x)
    h, w, _ = spec.shape
    params = np.zeros([3, h, w, model.head.num_params(spec.shape[2])], np.float32)
    for i in range(h):
        state = stepper.start_row(state, x, i)
        for j in range(w):
            params[:, i, j], state = stepper.pixel(state, x, i, j)
        state = stepper.end_row(state, x, i)
    np.testing.assert_allclose(params, model.params(x, label), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, spec", [("row_lstm", RGB_TINY), ("diagonal_bilstm", BINARY)])
def test_cached_sampler_equals_the_reference_sampler(arch, spec):
    """Same seeds, same compile mode (tf.function, no XLA): the very same samples."""
    model = _model(arch, spec, conditional=True, layers=1)
    seeds = rng.row_seeds(tf.constant([3, 4]), 3)
    label = tf.constant([1, 5, 9])
    fast = tf.function(lambda s, y: model.sample(s, y, cached=True))(seeds, label).numpy()
    ref = tf.function(lambda s, y: sampling.sample(model.params, model.head, spec, s, y))(
        seeds, label
    ).numpy()
    np.testing.assert_array_equal(fast, ref)
    assert len(np.unique(fast)) > 1  # not a constant image
    if spec.binary:
        x = _images(spec, seed=5)
        known = tf.broadcast_to(tf.range(5)[:, None, None] < 2, x.shape)  # top two rows
        done = tf.function(lambda *a: model.complete(*a, cached=True))(x, known, seeds, label)
        ref_done = tf.function(lambda *a: sampling.complete(model.params, model.head, spec, *a))(
            x, known, seeds, label
        )
        np.testing.assert_array_equal(done, ref_done)
        np.testing.assert_array_equal(done[:, :2], x[:, :2])
        assert not np.array_equal(done[:, 2:], x[:, 2:])


def test_training_on_real_digits_lowers_the_nll(mnist_dir, arch="row_lstm"):
    """On 8x12 centre crops of binarized digits (the Diagonal BiLSTM trains in the harness
    run below); the NLL is measured on held-out crops."""
    data = ImageData(small_data(mnist_dir), "train[:320]", training=False)
    crops = [b["image"][:, 10:18, 8:20] for b in data.dataset(64)]
    spec = DataSpec((8, 12, 1), "binary_static", 10)
    keras.utils.set_random_seed(0)  # the initial weights
    model = pixelrnn.build(pixelrnn.small(arch), spec, 1e-2)
    model.build_for_training({"image": crops[0], "label": tf.zeros([64], tf.int32)})
    step = tf.function(model.train_step)
    nll = tf.function(lambda x: tf.reduce_mean(-model.log_prob(x)))
    before = float(nll(crops[-1]))
    for i in range(3):
        for k, x in enumerate(crops[:-1]):
            step({"image": x, "label": tf.zeros([64], tf.int32), "seed": tf.constant([i, k])})
    after = float(nll(crops[-1]))
    assert after < before - 10.0, (before, after)  # at most 96 ln 2 = 66.5 nats per image


@pytest.fixture(scope="module")
def run(mnist_dir, tmp_path_factory):
    """A class-conditional Diagonal BiLSTM trained 12 steps by the harness, and exported."""
    tmp = tmp_path_factory.mktemp("pixelrnn_run")
    config = pixelrnn.Config(
        arch="diagonal_bilstm", layers=1, hidden=6, output_hidden=12, conditional=True
    )
    train_config = small_train(tmp, steps_per_epoch=4, eval_steps=4)
    return train.fit("pixelrnn", config, small_data(mnist_dir), train_config, verbose=0)


def test_harness_run_lowers_the_nll_and_records_metrics_and_pictures(run):
    acc = ea.EventAccumulator(os.path.join(run.model_dir, "eval"), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    loss = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    assert len(loss) == 2 and loss[1] < loss[0] - 20.0, loss
    assert {"samples", "completions", "final/nll_nats"} <= set(acc.Tags()["tensors"])
    final = json.load(open(os.path.join(run.model_dir, "metrics.json")))["final"]
    assert final["eval_examples"] == 256 and 50 < final["nll_nats"] < 784 * math.log(2)
    assert math.isclose(final["nll_bits_per_dim"], final["nll_nats"] / (784 * math.log(2)))
    png = tf.io.decode_png(tf.io.read_file(os.path.join(run.model_dir, "samples.png")))
    assert png.shape == (88, 88, 1)


def test_export_round_trip_through_the_tf1_loader(run):
    served = Served(run.export_path)
    model = run.model
    try:
        assert {"sample", "log_prob", "complete", "serving_default"} <= set(served.signatures)
        seed = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
        label = np.array([3, 8, 0], np.int32)
        out = served("sample", seed=seed, label=label)
        images = out["images"]
        assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
        assert set(np.unique(images)) == {0, 1}
        default = served("serving_default", seed=seed, label=label)["images"]
        np.testing.assert_array_equal(default, images)
        alone = served("sample", seed=seed[1:], label=label[1:])["images"]
        np.testing.assert_array_equal(alone, images[1:])  # rows are independent
        assert not np.array_equal(images[0], images[1])
        # same seed, same sample as the in-process cached sampler (no XLA on either side)
        local = tf.function(lambda s, y: model.sample(s, y))(seed, label).numpy()
        np.testing.assert_array_equal(images, local.astype(np.uint8))

        lp = served("log_prob", images=images, label=label)
        np.testing.assert_allclose(
            lp["log_prob"], model.log_prob(images.astype(np.float32), label), rtol=1e-5
        )
        np.testing.assert_allclose(
            lp["bits_per_dim"], -lp["log_prob"] / (784 * math.log(2)), rtol=1e-5
        )

        mask = np.zeros_like(images)
        mask[:, :14] = 1
        done = served("complete", images=images, mask=mask, seed=seed[::-1].copy(), label=label)
        np.testing.assert_array_equal(done["images"][:, :14], images[:, :14])
        assert not np.array_equal(done["images"], images)
        with pytest.raises(tf.errors.InvalidArgumentError, match="mask: values must be 1"):
            served("complete", images=images, mask=mask * 2, seed=seed, label=label)
        with pytest.raises(tf.errors.InvalidArgumentError, match="pixel values must be in 0..1"):
            served("log_prob", images=images * 3, label=label)
        with pytest.raises(tf.errors.InvalidArgumentError, match="label: must be < 10"):
            served("log_prob", images=images, label=np.array([3, 10, 0], np.int32))
    finally:
        served.close()


def test_trainer_usage_error_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainers.pixelrnn", "--arch=gru", f"--model_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "arch" in errors[0] and "Traceback" not in result.stderr
