"""PixelCNN family: shapes, exact causality, normalisation, cached == reference, training,
export through the TF Serving loader, TensorBoard pictures, the trainer's usage errors."""

import dataclasses
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
import tensorflow_datasets as tfds

from gen_keras import data as data_lib
from gen_keras import train
from gen_keras.config import DataConfig, UsageError
from gen_keras.data import DataSpec, ImageData
from gen_keras.layers import precision
from gen_keras.layers.masked import MaskedConv2D
from gen_keras.models import autoencoder, autoregressive, pixelcnn
from tests.conftest import REPO, small_data, small_train
from tests.test_export import STATEFUL_RNG, Served

BINARY = DataSpec((5, 7, 1), "binary_static", 10)  # distinct sizes: a swapped axis fails
COLOUR = DataSpec((5, 7, 3), "uint8", 10)
# the gated net with pytorch-generative's split vertical convs is tested as a third arch,
# keras-io's residual blocks (no bottleneck, a ReLU after every conv, two output layers) a fourth
ARCHS = (*pixelcnn.ARCHS, "gated_split", "pixelcnn_post")
HEADS = [
    ("bernoulli", BINARY),
    ("bernoulli", DataSpec((5, 7, 2), "binary_static", 10)),
    ("categorical", COLOUR),
    ("logistic_mixture", COLOUR),
]


def _config(arch, likelihood="auto", **kw):
    fields = dict(
        arch=arch,
        likelihood=likelihood,
        hidden=6,
        layers=2,
        first_kernel_size=3,
        output_hidden=6,
        num_mixtures=2,
    )
    if arch == "gated_split":
        fields.update(arch="gated", vertical="split", skip_channels=12)
    if arch == "pixelcnn_post":
        fields.update(arch="pixelcnn", bottleneck=False, activations="post", output_layers=2)
    fields.update(kw)
    return pixelcnn.Config(**fields)


def _model(config, spec):
    tf.keras.utils.set_random_seed(1)
    model = pixelcnn.build(config, spec, 1e-2)
    model.build_for_training(_batch(spec))
    return model


def _batch(spec, n=3, seed=0):
    if spec.binary:
        x = tf.cast(tf.random.stateless_uniform([n, *spec.shape], [seed, 1]) < 0.3, tf.float32)
    else:
        x = tf.floor(tf.random.stateless_uniform([n, *spec.shape], [seed, 1], maxval=256.0))
    return {"image": x, "label": tf.range(n, dtype=tf.int32) % 10, "seed": tf.constant([seed, 2])}


def _seeds(n, base=3):
    return np.stack([np.arange(n), np.full(n, base)], axis=1).astype(np.int32)


# -- shapes and sizes ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", pixelcnn.ARCHS)
@pytest.mark.parametrize("likelihood, spec", HEADS, ids=lambda v: getattr(v, "mode", v))
def test_parameter_and_distribution_shapes(arch, likelihood, spec):
    model = _model(_config(arch, likelihood), spec)
    x = _batch(spec)["image"]
    params = model(x)
    c = spec.shape[-1]
    assert params.shape == (3, 5, 7, model.head.num_params(c))
    assert model.log_prob(x).shape == (3,)
    if likelihood != "logistic_mixture":
        dist = model.head.distribution(params)
        assert dist.event_shape == spec.shape and dist.batch_shape == (3,)


def test_parameter_counts():
    spec = DataSpec((5, 7, 1), "binary_static", 10)
    small = dict(hidden=2, layers=1, first_kernel_size=3, output_hidden=4)
    # first (2,3,1,4)+4; block 1x1 4->2, 2x3 2->2, 1x1 2->4 (+biases); outputs 4->4, 4->1
    assert _model(_config("pixelcnn", **small), spec).count_params() == 28 + 48 + 20 + 5
    # gated_0: v (2,3,1,4)+4, h (1,2,1,4)+4, link 4x4, skip 2->4, res 2->2;
    # gated_1 (last): v (2,3,2,4)+4, h (1,2,2,4)+4, link 4x4, skip 2->4; outputs
    small["layers"] = 2
    assert _model(_config("gated", **small), spec).count_params() == 74 + 100 + 25


def _unmasked_params(model):
    """Trainable weights a mask does not zero (MaskedConv2D stores a few masked taps)."""
    masked = sum(
        int((layer._mask == 0).sum())
        for layer in model._flatten_layers()
        if isinstance(layer, MaskedConv2D) and layer._mask is not None
    )
    return model.count_params() - masked


def test_reproduce_presets_are_pytorch_generative_networks():
    """The expected counts are the peer's own: its reproduce() models built with torch
    2.13 (pytorch-generative at its GitHub HEAD, 2026-11), counting parameters not zeroed
    by CausalConv2d's mask (PixelCNN: 53,569 stored, 16,160 of them masked out) and, for
    the Gated PixelCNN (3,364,161 stored), leaving out its last layer's vertical 1x1 and
    horizontal residual (33,024 + 16,512), which receive no gradient: their outputs feed
    nothing. A spec, not a metric."""
    spec = DataSpec((28, 28, 1), "binary_static", 10)
    expected = {"pixelcnn": 53_569 - 16_160, "gated": 3_364_161 - 33_024 - 16_512}
    for arch, count in expected.items():
        model = pixelcnn.PixelCNN(spec, pixelcnn.reproduce(arch))
        model(tf.zeros([1, 28, 28, 1]))
        assert _unmasked_params(model) == count, arch
        assert len(model.blocks) == {"pixelcnn": 15, "gated": 11}[arch]


def test_the_keras_io_preset_is_its_network():
    """keras-io's examples/generative/pixelcnn.py model: 532,673 stored parameters
    (model.summary() of the example), of which 365,633 are kept by its masks (the 7x7
    mask A keeps 24 of 49 taps, each 3x3 mask B 5 of 9). A spec, not a metric."""
    spec = DataSpec((28, 28, 1), "binary_static", 10)
    model = pixelcnn.PixelCNN(spec, pixelcnn.keras_io())
    model(tf.zeros([1, 28, 28, 1]))
    assert _unmasked_params(model) == 365_633
    assert len(model.blocks) == 5 and len(model.more_hidden) == 1
    assert [b.reduce.filters for b in model.blocks] == [128] * 5
    assert [b.conv.filters for b in model.blocks] == [64] * 5


_FLOPS = """
import json
import tensorflow as tf
from benchmarks import pixelcnn as bench
from gen_keras.data import DataSpec
from gen_keras.models import pixelcnn
spec = DataSpec((5, 7, 1), "binary_static", 10)
config = pixelcnn.Config(arch="pixelcnn", hidden=2, layers=1, first_kernel_size=3, output_hidden=4)
model = pixelcnn.PixelCNN(spec, config)
model(tf.zeros([1, 5, 7, 1]))
print(json.dumps(bench.train_flops_per_image(model, spec)))
"""


def test_the_speed_benchmark_counts_the_training_flops_of_the_masked_convs():
    """Kernel entries (the counts of test_parameter_counts without biases): first 2x3x1x4,
    block 1x1x4x2, 2x3x2x2, 1x1x2x4, outputs 1x1x4x4, 1x1x4x1: 84 stored, of which the
    masks keep 72 (mask A keeps 4 of the first kernel's 6 taps, mask B 5 of the 2x3's 6).
    Per image: 35 pixels, 2 FLOPs a multiply-add, forward plus twice backward."""
    result = subprocess.run(
        [sys.executable, "-c", _FLOPS], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    flops = json.loads(result.stdout.strip().splitlines()[-1])
    assert flops == {"stored": 3 * 2 * 35 * 84, "useful": 3 * 2 * 35 * 72}


def test_configuration_errors_are_usage_errors():
    with pytest.raises(UsageError, match="does not fit binarization"):
        pixelcnn.build(pixelcnn.Config(likelihood="categorical"), BINARY, 1e-3)
    with pytest.raises(UsageError, match="must be a multiple of the 3 colour channels"):
        pixelcnn.build(pixelcnn.Config(hidden=16, likelihood="categorical"), COLOUR, 1e-3)
    with pytest.raises(UsageError, match="kernel_size=4 must be odd"):
        pixelcnn.Config(kernel_size=4)
    with pytest.raises(UsageError, match="arch='lstm' is not one of"):
        pixelcnn.Config(arch="lstm")
    with pytest.raises(UsageError, match="vertical='tall' is not one of"):
        pixelcnn.Config(vertical="tall")
    with pytest.raises(UsageError, match="residual blocks of arch='pixelcnn'; the gated"):
        pixelcnn.Config(arch="gated", activations="post")
    with pytest.raises(UsageError, match="output_layers=0 must be"):
        pixelcnn.Config(output_layers=0)
    with pytest.raises(UsageError, match="must be a binary mode or 'uint8'"):
        pixelcnn.build(pixelcnn.Config(), DataSpec((5, 7, 1), "float", 10), 1e-3)


# -- the defining property: causality ------------------------------------------------------


def _group_jacobian(model, spec, images=1, features=False):
    """|d (sum of outputs of pixel (i, j), colour group g) / d x| as [H, W, G, H, W, C].

    Outputs are the head parameters, or with features=True `model.features` (no dead
    ReLU can hide a dependency there). One backward pass: row n of a batch of H*W*G
    copies of x picks output n; the maximum over `images` random inputs.
    """
    fn = model.features if features else model
    h, w, c = spec.shape
    n = h * w * model.groups
    out = 0.0
    for k in range(images):
        x = tf.tile(_batch(spec, n=1, seed=5 + k)["image"], [n, 1, 1, 1])
        with tf.GradientTape() as tape:
            tape.watch(x)
            params = tf.reshape(fn(x), [n, n, -1])
            picked = tf.reduce_sum(tf.linalg.diag_part(tf.reduce_sum(params, -1)))
        grad = tape.gradient(picked, x).numpy().reshape(h, w, model.groups, h, w, c)
        out = np.maximum(out, np.abs(grad))
    return out


def _earlier(spec, groups):
    """allowed[i, j, g, i2, j2, c2]: input (i2, j2, c2) precedes output (i, j, group g)."""
    h, w, c = spec.shape
    allowed = np.zeros((h, w, groups, h, w, c), bool)
    for i, j, i2, j2 in itertools.product(range(h), range(w), range(h), range(w)):
        if (i2, j2) < (i, j):
            allowed[i, j, :, i2, j2, :] = True
        elif (i2, j2) == (i, j) and groups > 1:
            for g in range(groups):
                allowed[i, j, g, i2, j2, :g] = True
    return allowed


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("likelihood, spec", HEADS, ids=lambda v: getattr(v, "mode", v))
def test_gradients_wrt_later_pixels_and_subpixels_are_exactly_zero(arch, likelihood, spec):
    model = _model(_config(arch, likelihood, layers=3), spec)
    jac = _group_jacobian(model, spec, images=2)
    assert np.all(jac[~_earlier(spec, model.groups)] == 0.0)
    seen = _group_jacobian(model, spec, features=True).max(
        axis=(2, 5)
    )  # [H, W, H, W]: any colour group, any input channel
    h, w, _ = spec.shape
    for i, j in itertools.product(range(h), range(w)):
        assert j == 0 or seen[i, j, i, j - 1] > 0  # the pixel to the left
        assert i == 0 or seen[i, j, i - 1, j] > 0  # the pixel above


def test_gated_pixelcnn_sees_every_earlier_pixel_and_pixelcnn_has_a_blind_spot():
    """With enough layers for a 5x7 image, the gated receptive field has no hole."""
    deep = dict(layers=6, kernel_size=3, first_kernel_size=3, output_hidden=12)
    for likelihood, spec in (HEADS[0], HEADS[2]):
        gated = _model(_config("gated", likelihood, **deep), spec)
        allowed = _earlier(spec, gated.groups)
        jac = _group_jacobian(gated, spec, features=True)
        assert np.all(jac[allowed] != 0.0), np.argwhere((jac == 0) & allowed)[:5]
        assert np.all(jac[~allowed] == 0.0)
    plain = _model(_config("pixelcnn", **deep), BINARY)
    jac = _group_jacobian(plain, BINARY, features=True)
    # (4, 0) never sees (3, 2..6): the blind spot of stacked masked 3x3 convs
    assert np.all(jac[4, 0, 0, 3, 2:] == 0.0)
    assert np.all(jac[4, 0, 0, 3, :2] != 0.0)
    # pytorch-generative's split vertical stack reaches row i - 1 only up to column
    # j + k//2 however deep (its vertical output at row i - 1 sees that row through 1x1s
    # only); checked on the peer itself with torch: d out(1, 0) / d x(0, 2) == 0
    split = _model(_config("gated_split", **deep), BINARY)
    jac = _group_jacobian(split, BINARY, features=True)[:, :, 0, :, :, 0]
    assert np.all(jac[1, 0, 0, 2:] == 0.0) and np.all(jac[1, 0, 0, :2] != 0.0)
    assert np.all(jac[4, 6, :4] != 0.0)  # every earlier row is seen in full further right


# -- normalisation ---------------------------------------------------------------------------


def _total_probability(model, images, chunk=4096):
    logs = [model.log_prob(images[k : k + chunk]) for k in range(0, len(images), chunk)]
    return float(tf.reduce_logsumexp(tf.concat(logs, 0)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(3, 4, 1), (2, 2, 3)])
def test_probabilities_of_all_binary_images_sum_to_one(arch, shape):
    spec = DataSpec(shape, "binary_static", 10)
    model = _model(_config(arch, hidden=6, conditional=True), spec)
    n = spec.num_dims
    images = np.array(list(itertools.product([0.0, 1.0], repeat=n)), np.float32)
    images = images.reshape(-1, *shape)
    for label in (0, 7):
        labels = np.full(len(images), label, np.int32)
        lp = model.log_prob(images, labels)
        assert abs(float(tf.reduce_logsumexp(lp))) < 1e-4


@pytest.mark.parametrize("likelihood", ["categorical", "logistic_mixture"])
def test_probabilities_of_all_8bit_two_channel_pixels_sum_to_one(likelihood):
    spec = DataSpec((1, 1, 2), "uint8", 10)
    model = _model(_config("gated", likelihood, hidden=4, output_hidden=4), spec)
    values = np.arange(256, dtype=np.float32)
    images = np.stack(np.meshgrid(values, values, indexing="ij"), -1).reshape(-1, 1, 1, 2)
    assert abs(_total_probability(model, images)) < 1e-3


# -- sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "likelihood, spec", [HEADS[0], HEADS[2], HEADS[3]], ids=lambda v: getattr(v, "mode", v)
)
def test_cached_sampler_equals_the_reference_sampler(arch, likelihood, spec):
    model = _model(_config(arch, likelihood, conditional=True), spec)
    label, images = tf.constant([4, 0, 9]), _batch(spec)["image"]
    known = autoregressive.top_half(tf.shape(images), spec.shape[0])

    @tf.function
    def run_both(seeds):
        samples = [model.sample(seeds, label, cached) for cached in (True, False)]
        filled = [model.complete(images, known, seeds, label, cached) for cached in (True, False)]
        return samples + filled

    cached, reference, filled, filled_reference = (t.numpy() for t in run_both(_seeds(3)))
    np.testing.assert_array_equal(cached, reference)
    assert not np.array_equal(cached[0], cached[1])
    np.testing.assert_array_equal(filled, filled_reference)
    np.testing.assert_array_equal(filled[:, :2], images.numpy()[:, :2])
    assert not np.array_equal(filled[:, 2:], images.numpy()[:, 2:])


@pytest.mark.parametrize("arch, likelihood, spec", [("gated", *HEADS[2]), ("pixelcnn", *HEADS[0])])
def test_both_samplers_compile_with_xla_and_agree(arch, likelihood, spec):
    model = _model(_config(arch, likelihood), spec)
    run_both = tf.function(
        lambda s: [model.sample(s, None, cached) for cached in (True, False)], jit_compile=True
    )
    cached, reference = (t.numpy() for t in run_both(_seeds(2)))
    np.testing.assert_array_equal(cached, reference)
    assert cached.min() >= 0 and cached.max() <= spec.max_value


def test_the_label_changes_its_rows_parameters_only():
    model = _model(_config("gated", conditional=True), BINARY)
    x = _batch(BINARY)["image"]
    a, b = model(x, tf.constant([1, 2, 3])).numpy(), model(x, tf.constant([1, 5, 3])).numpy()
    np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])
    assert np.abs(a[1] - b[1]).min() > 0  # every pixel's parameters depend on the label


# -- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", pixelcnn.ARCHS)
def test_short_training_on_mock_data_lowers_the_nll(arch, mnist_dir, monkeypatch):
    monkeypatch.setattr(data_lib, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=64, max_value=50, data_dir=mnist_dir):
        data = ImageData(DataConfig(data_dir=mnist_dir), "train", training=True)
        batches = list(data.dataset(32, steps=2))
    keras.utils.set_random_seed(0)  # the initial weights
    model = pixelcnn.build(dataclasses.replace(pixelcnn.small(), arch=arch), data.spec, 1e-2)
    model.build_for_training(batches[0])
    step = tf.function(model.train_step)
    losses = []
    for epoch in range(5):
        for m in model.metrics:
            m.reset_state()
        for i, b in enumerate(batches):
            logs = step(dict(b, seed=tf.constant([epoch, i])))
        losses.append(float(logs["nll"]))
    assert losses[-1] < losses[0] - 100.0, losses
    bpd = float(logs["bits_per_dim"])
    assert math.isclose(bpd, float(logs["nll"]) / (784 * math.log(2)), rel_tol=1e-4)


def test_bfloat16_precision_reaches_the_training_steps_only(mnist_dir, tmp_path, monkeypatch):
    from tensorflow.core.protobuf import saved_model_pb2

    convolve = MaskedConv2D.convolve
    calls = []  # the precision of every masked convolution run or traced

    def spy(layer, x, kernel, bias):
        calls.append(precision.current())
        return convolve(layer, x, kernel, bias)

    monkeypatch.setattr(MaskedConv2D, "convolve", spy)
    train_config = small_train(
        tmp_path, epochs=1, steps_per_epoch=3, eval_steps=1, precision="bfloat16"
    )
    result = train.fit("pixelcnn", pixelcnn.small(), small_data(mnist_dir), train_config, verbose=0)
    traced = [p for p in calls if p != "float32"]
    calls.clear()
    result.model.params(tf.zeros([1, *result.model.spec.shape]))  # one pass, in float32
    per_pass = len(calls)
    assert per_pass and set(calls) == {"float32"}
    # only whole passes (the training step's traces) ran in bf16
    assert traced and set(traced) == {"bfloat16"} and len(traced) % per_pass == 0, traced
    assert math.isfinite(result.eval_logs["nll"]) and result.step == 3
    # evaluation and the export are float32: nothing in the served graphs is bf16
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(result.export_path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    text = str(proto.meta_graphs[0].graph_def)
    assert "Conv2D" in text and "DT_BFLOAT16" not in text


@pytest.mark.parametrize("arch, conditional", [("pixelcnn", False), ("gated", True)])
def test_micro_batches_take_the_whole_batchs_step(arch, conditional):
    config, batch = _config(arch, conditional=conditional), _batch(BINARY, n=6)
    results = []
    for chunk in (0, 2):
        tf.keras.utils.set_random_seed(1)
        model = pixelcnn.PixelCNN(BINARY, config)
        model.compile(optimizer=keras.optimizers.SGD(0.1))  # the update is the gradient
        model.build_for_training(batch)
        before = [v.numpy() for v in model.trainable_variables]
        model.micro_batch = chunk
        step = tf.function(model.train_step)
        loss = float(step(batch)["loss"])
        delta = [b - v.numpy() for b, v in zip(before, model.trainable_variables, strict=True)]
        ops = step.get_concrete_function(batch).graph.get_operations()
        results.append((loss, delta, sum(op.type == "Conv2D" for op in ops)))
    (loss, delta, convs), (loss_c, delta_c, convs_c) = results
    assert convs_c == 3 * convs  # three chunks of 2 images, each its own forward pass
    assert math.isclose(loss_c, loss, rel_tol=1e-6)
    assert max(np.abs(d).max() for d in delta) > 1e-3
    for whole, chunked in zip(delta, delta_c, strict=True):
        np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-7)
    model.micro_batch = 4
    with pytest.raises(UsageError, match=r"^micro_batch=4 must divide each replica's batch \(6"):
        tf.function(model.train_step)(batch)


def test_the_harness_passes_micro_batch_to_the_step_and_refuses_misfits(mnist_dir, tmp_path):
    data = small_data(mnist_dir)
    config = small_train(tmp_path, epochs=1, steps_per_epoch=2, eval_steps=1, micro_batch=8)
    result = train.fit("pixelcnn", pixelcnn.small(), data, config, verbose=0)
    assert result.model.micro_batch == 8 and result.step == 2
    assert math.isfinite(result.eval_logs["nll"])
    bad = small_train(tmp_path / "bad", micro_batch=5)  # batch 32
    with pytest.raises(UsageError, match=r"^micro_batch=5 must be >= 0 and divide each replica"):
        train.fit("pixelcnn", pixelcnn.small(), data, bad, verbose=0)
    assert not (tmp_path / "bad").exists()  # refused before the run directory was made
    with pytest.raises(UsageError, match=r"^micro_batch=8 applies to pixelcnn, pixelrnn and vae; "):
        ae = small_train(tmp_path / "ae", micro_batch=8)
        train.fit("autoencoder", autoencoder.small(), data, ae, verbose=0)


# -- a trained run: export, serving, TensorBoard ---------------------------------------------


@pytest.fixture(scope="module")
def run(mnist_dir, tmp_path_factory):
    """A small conditional gated PixelCNN trained for 4 steps on real MNIST and exported."""
    tmp = tmp_path_factory.mktemp("pixelcnn_run")
    config = pixelcnn.Config(hidden=8, layers=2, output_hidden=8, conditional=True)
    train_config = small_train(tmp, epochs=1, steps_per_epoch=3, eval_steps=2)
    return train.fit("pixelcnn", config, small_data(mnist_dir), train_config, verbose=0)


@pytest.fixture(scope="module")
def served(run):
    s = Served(run.export_path)
    yield s
    s.close()


def _mnist(n=3):
    from tests.test_export import _test_images

    return _test_images(n)


def test_export_signatures_run_like_tf_serving(run, served):
    assert {"serving_default", "sample", "log_prob", "complete"} <= set(served.signatures)
    assert set(served.signatures["complete"].inputs) == {"images", "mask", "seed", "label"}
    seed, label = _seeds(3), np.array([0, 3, 9], np.int32)
    out = served("sample", seed=seed, label=label)["images"]
    assert out.shape == (3, 28, 28, 1) and out.dtype == np.uint8 and out.max() <= 1
    np.testing.assert_array_equal(served("serving_default", seed=seed, label=label)["images"], out)
    before = run.model.serving_functions()["sample"](tf.constant(seed), tf.constant(label))
    np.testing.assert_array_equal(before["images"].numpy(), out)  # same seed, after reload
    np.testing.assert_array_equal(
        served("sample", seed=seed[1:], label=label[1:])["images"], out[1:]
    )

    images = _mnist()
    lp = served("log_prob", images=images, label=label)
    expected = run.model.log_prob(tf.cast(images, tf.float32), tf.constant(label)).numpy()
    np.testing.assert_allclose(lp["log_prob"], expected, rtol=1e-5)
    np.testing.assert_allclose(lp["bits_per_dim"], -expected / (784 * math.log(2)), rtol=1e-5)

    mask = np.zeros_like(images)
    mask[:, :14] = 1
    mask[0, 20, 5] = 1
    filled = served("complete", images=images, mask=mask, seed=seed, label=label)["images"]
    assert filled.dtype == np.uint8 and filled.shape == images.shape
    np.testing.assert_array_equal(filled[mask == 1], images[mask == 1])
    model_fill = tf.function(run.model.complete)(
        tf.cast(images, tf.float32), mask, tf.constant(seed), tf.constant(label)
    )
    np.testing.assert_array_equal(filled, model_fill.numpy().astype(np.uint8))


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"mask": np.full([2, 28, 28, 1], 2, np.uint8)}, "mask: values must be 1"),
        ({"mask": np.zeros([3, 28, 28, 1], np.uint8)}, "mask: needs one row per row"),
        ({"label": np.array([0, 10], np.int32)}, "label: must be < 10"),
        ({"images": np.full([2, 28, 28, 1], 3, np.uint8)}, "pixel values must be in 0..1"),
    ],
)
def test_bad_completion_inputs_get_a_clear_error(served, inputs, message):
    feed = {
        "images": np.zeros([2, 28, 28, 1], np.uint8),
        "mask": np.zeros([2, 28, 28, 1], np.uint8),
        "seed": _seeds(2),
        "label": np.zeros([2], np.int32),
    }
    feed.update(inputs)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        served("complete", **feed)


def test_export_has_no_xla_and_no_stateful_rng(run):
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(run.export_path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    graph = sm.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
    assert not {n.op for n in nodes} & STATEFUL_RNG
    assert not any(n.attr["_XlaMustCompile"].b for n in nodes)


def test_tensorboard_has_samples_completions_and_nll(run):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(os.path.join(run.model_dir, "eval"))
    acc.Reload()
    assert {"samples", "completions"} <= set(acc.Tags()["tensors"]) | set(acc.Tags()["images"])
    assert os.path.isfile(os.path.join(run.model_dir, "samples", "epoch_0001.png"))
    assert {"nll_nats", "nll_bits_per_dim"} <= set(run.final_metrics)
    assert run.final_metrics["eval_examples"] == 256
    assert math.isclose(
        run.final_metrics["nll_bits_per_dim"],
        run.final_metrics["nll_nats"] / (784 * math.log(2)),
        rel_tol=1e-6,
    )


# -- the trainer -----------------------------------------------------------------------------


def test_trainer_usage_errors_exit_2_with_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.pixelcnn",
            "--likelihood=logistic_mixture",
            "--nodownload",
            f"--model_dir={tmp_path}/run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit binarization='binary_static'" in errors[0]
    assert "Traceback" not in result.stderr
