"""The serving boundary as TF Serving's C++ path runs it: every input of every signature of
every family is checked inside the graph (rank, height, width, channels), named in the error
with the shape received and the shape expected; a 0-row batch gives 0-row outputs.

Signatures run through `Session._make_callable_from_options` (RunCallable, what the model
server does), which, unlike `Session.run`, checks no feed shapes in Python first.
"""

import dataclasses
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from gen_keras import export, models
from gen_keras.data import DataSpec
from tests.serving_standin import Served

# A small spec per family (height 8, width 12, 1 channel: distinct, so a swapped axis fails);
# the GAN is conditional, so `label` is checked too.
VARIANTS = {
    "autoencoder": ("autoencoder", "binary_static", {}),
    "classifier": ("classifier", "float", {}),
    "gan_conditional": ("gan", "float_symmetric", {"conditional": True}),
    "pixelcnn": ("pixelcnn", "binary_static", {}),
    "pixelrnn": ("pixelrnn", "binary_static", {}),
    "vae": ("vae", "binary_static", {}),
}
SHAPE = (8, 12, 1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("contract"))
    served = {}
    for variant, (family, mode, overrides) in VARIANTS.items():
        module, spec = models.get(family), DataSpec(SHAPE, mode, 10)
        keras.utils.set_random_seed(1)
        model = module.build(dataclasses.replace(module.small(), **overrides), spec, 1e-3)
        model.build_for_training({"image": tf.zeros([2, *SHAPE]), "label": tf.zeros([2], tf.int32)})
        served[variant] = (spec, Served(export.export(model, root, variant)))
    yield served
    for _, s in served.values():
        s.close()


def run_callable(served, name):
    """fn(**inputs) -> {output: ndarray}, through RunCallable (no Python shape checks)."""
    sig = served.signatures[name]
    feeds, fetches = sorted(sig.inputs), sorted(sig.outputs)
    options = config_pb2.CallableOptions()
    options.feed.extend(sig.inputs[k].name for k in feeds)
    options.fetch.extend(sig.outputs[k].name for k in fetches)
    fn = served.sess._make_callable_from_options(options)
    return lambda **inputs: dict(zip(fetches, fn(*[inputs[k] for k in feeds]), strict=True))


def _valid(sig, spec, n, rng):
    inputs = {}
    for key, info in sig.inputs.items():
        shape = [n if d.size == -1 else d.size for d in info.tensor_shape.dim]
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
        if key == "images":
            inputs[key] = rng.integers(0, spec.max_value + 1, shape).astype(dtype)
        elif key == "label":
            inputs[key] = rng.integers(0, spec.num_classes, shape).astype(dtype)
        elif key == "mask":
            inputs[key] = rng.integers(0, 2, shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            inputs[key] = rng.integers(0, 2**20, shape).astype(dtype)
        else:
            inputs[key] = rng.normal(size=shape).astype(dtype)
    return inputs


def _wrong_shapes(shape):
    """Every way to get one input wrong: rank one lower and one higher, each non-batch
    dimension off by one, and (for images) the 200x200x3 image of a different dataset."""
    wrong = [shape[:-1], [*shape, 1]]
    wrong += [[*shape[:i], shape[i] + 1, *shape[i + 1 :]] for i in range(1, len(shape))]
    if len(shape) == 4:
        wrong.append([shape[0], 200, 200, 3])
    return wrong


def _resized(value, shape):
    flat = np.resize(value.ravel(), int(np.prod(shape)))  # keeps values in range
    return flat.reshape(shape)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_input_is_shape_checked_in_the_graph_on_the_run_callable_path(exports, variant):
    spec, served = exports[variant]
    rng = np.random.default_rng(0)
    for name, sig in served.signatures.items():
        call = run_callable(served, name)
        good = _valid(sig, spec, 3, rng)
        out = call(**good)
        assert all(v.shape[0] == 3 for v in out.values()), (name, out)
        for key, value in good.items():
            declared = [d.size for d in sig.inputs[key].tensor_shape.dim]
            expected = "[" + ", ".join("N" if d == -1 else str(d) for d in declared) + "]"
            for shape in _wrong_shapes(list(value.shape)):
                bad = dict(good, **{key: _resized(value, shape)})
                with pytest.raises(tf.errors.InvalidArgumentError) as error:
                    call(**bad)
                message = error.value.message
                assert f"{key}: expected shape {expected}" in message, (name, key, shape, message)
                assert "[" + " ".join(map(str, shape)) + "]" in message, (name, key, message)
                assert not re.search(r"Input to reshape|Incompatible shapes|ConcatOp", message)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_zero_row_batch_gives_zero_row_outputs_in_every_signature(exports, variant):
    spec, served = exports[variant]
    rng = np.random.default_rng(1)
    for name, sig in served.signatures.items():
        out = run_callable(served, name)(**_valid(sig, spec, 0, rng))
        assert out and all(v.shape[0] == 0 for v in out.values()), (name, out)
        declared = {k: [d.size for d in v.tensor_shape.dim] for k, v in sig.outputs.items()}
        for key, value in out.items():
            assert list(value.shape[1:]) == [d for d in declared[key][1:]], (name, key)


def test_the_python_session_path_still_refuses_wrong_shapes_before_the_graph(exports):
    _, served = exports["pixelcnn"]
    with pytest.raises(ValueError, match="Cannot feed value of shape"):
        served("log_prob", images=np.zeros([2, 20, 20, 1], np.uint8))
    # ...and the same feed on the model server's path is refused by the graph itself
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images: expected shape \[N, 8"):
        run_callable(served, "log_prob")(images=np.zeros([2, 20, 20, 1], np.uint8))
