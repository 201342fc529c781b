"""The serving input contract: TensorSpecs of the shared inputs and the checks every signature
runs inside its graph.

TF Serving runs signatures through the C++ `Session::Run`/`RunCallable`, which checks no feed
shapes (tensorflow/serving#1436): a placeholder declared [None, 28, 28, 1] accepts a
[2, 200, 200, 3] feed there. So every check below validates, in the graph, the input's rank
and every non-batch dimension against the shape its TensorSpec declares (the tensor's static
shape inside the traced function), then batch size, dtype range and finiteness, each with a
message naming the input, the value received and what was expected. A 0-row batch is valid
and gives 0-row outputs.
"""

from __future__ import annotations

import functools
import inspect

import tensorflow as tf

# Rows per request; larger requests are refused with a clear message. Declared with the
# clients, which check it before asking, without TensorFlow.
from gen_keras.serving import MAX_BATCH as MAX_BATCH

SEED_SPEC = tf.TensorSpec([None, 2], tf.int32, name="seed")
LABEL_SPEC = tf.TensorSpec([None], tf.int32, name="label")


def image_spec(spec) -> tf.TensorSpec:
    """uint8 [None, H, W, C] in data space ({0,1} binary, 0..255 otherwise)."""
    return tf.TensorSpec([None, *spec.shape], tf.uint8, name="images")


def signature(fn, *specs, conditional: bool = False):
    """tf.function(fn) with input_signature specs, plus a trailing `label` if conditional.

    fn's argument names become the SignatureDef's input keys; a conditional model's fn
    takes `label` last (it is None for unconditional models). Every spec is batch-leading
    ([None, ...]), and so is every output.

    A 0-row request runs fn on one zero row per input and returns its outputs' first 0
    rows: with oneDNN on (our default, and TensorFlow's on CPUs with VNNI, BF16 or AMX), a
    Conv2D given 0 rows returns its input (TF 2.21: [0, 8, 8, 3] in, [0, 8, 8, 3] out for
    4 filters), so a model never sees an empty batch. Other requests reach fn as fed (a
    wrong feed, of any rank, still meets the checks in fn and their messages).
    """
    params = inspect.signature(fn)

    def rows(value):  # leading dimension; 1 for a (wrong) scalar feed, which fn refuses
        return tf.concat([tf.shape(value), [1]], 0)[0]

    def one_zero_row(value):
        return tf.zeros(tf.concat([[1], tf.shape(value)[1:]], 0), value.dtype)

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        values = list(params.bind(*args, **kwargs).arguments.values())
        n = rows(values[0])
        fed = []
        for value in values:
            if value is None:  # an unconditional model's label
                fed.append(value)
                continue
            empty = tf.equal(n, 0) & tf.equal(rows(value), 0)
            row = tf.cond(empty, lambda v=value: one_zero_row(v), lambda v=value: v)
            row.set_shape(value.shape)
            fed.append(row)
        return tf.nest.map_structure(lambda out: out[:n], fn(*fed))

    return tf.function(guarded, input_signature=[*specs, *([LABEL_SPEC] if conditional else [])])


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def shape_check(name: str, tensor):
    """An in-graph assert that `tensor`'s runtime shape is its declared static shape.

    The declared shape is `tensor.shape` where the function was traced (its TensorSpec);
    None dimensions (the batch) match any size. Uses only the runtime `Shape` op and data
    comparisons (no `Rank`/`Size` of the input, which graph optimisers fold to the declared
    values), so it holds on the C++ path.
    """
    declared = tensor.shape.as_list()
    rank = len(declared)
    shape = tf.shape(tensor)
    # Shape padded with -1: entry `rank` is -1 exactly when the input's rank is <= rank, and
    # a lower rank puts a -1 where a dimension (>= 0) is expected.
    padded = tf.concat([shape, tf.fill([rank + 1], -1)], 0)[: rank + 1]
    want = tf.constant([-2 if d is None else d for d in declared] + [-1], tf.int32)
    ok = tf.reduce_all(tf.logical_or(tf.equal(padded, want), tf.equal(want, -2) & (padded >= 0)))
    return tf.debugging.Assert(
        ok,
        [f"{name}: expected shape {_shape_text(declared)} ({tensor.dtype.name}), received", shape],
        summarize=8,
        name=f"check_{name}_shape",
    )


def _batch_checks(name: str, tensor, batch=None):
    # The shape check runs first: the other checks assume the declared rank.
    first = shape_check(name, tensor)
    with tf.control_dependencies([first]):
        n = tf.shape(tensor)[0]
        checks = [
            first,
            tf.debugging.assert_less_equal(
                n, MAX_BATCH, message=f"{name}: at most {MAX_BATCH} rows per request"
            ),
        ]
        if batch is not None:
            checks.append(
                tf.debugging.assert_equal(
                    n, batch, message=f"{name}: needs one row per row of the first input"
                )
            )
    return checks


def _checked(tensor, checks):
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def check_images(images, spec):
    """Validates uint8 images [N, H, W, C] against the model's data range; returns them."""
    checks = _batch_checks("images", images)
    with tf.control_dependencies(checks):
        checks.append(
            tf.debugging.assert_less_equal(
                tf.reduce_max(images),
                tf.constant(spec.max_value, tf.uint8),
                message=(
                    f"images: pixel values must be in 0..{spec.max_value} for a {spec.mode} model"
                ),
            )
        )
    return _checked(images, checks)


def check_seed(seed, batch=None):
    """Validates int32 seeds [N, 2] (one per row); returns them."""
    return _checked(seed, _batch_checks("seed", seed, batch))


def check_label(label, num_classes: int, batch=None):
    """Validates int32 class labels [N] in 0..num_classes-1; returns them."""
    checks = _batch_checks("label", label, batch)
    with tf.control_dependencies(checks):
        checks += [
            tf.debugging.assert_non_negative(label, message="label: must be >= 0"),
            tf.debugging.assert_less(
                label, num_classes, message=f"label: must be < {num_classes} (number of classes)"
            ),
        ]
    return _checked(label, checks)


def check_rows(name: str, tensor, batch=None):
    """Validates a float input [N, ...] (shape, batch size, finiteness); returns it."""
    checks = _batch_checks(name, tensor, batch)
    with tf.control_dependencies(checks):
        checks.append(tf.debugging.assert_all_finite(tensor, message=f"{name}: must be finite"))
    return _checked(tensor, checks)


def check_mask(mask, batch):
    """Validates a completion mask uint8 [N, H, W, C] (1 = known, 0 = to sample)."""
    checks = _batch_checks("mask", mask)
    with tf.control_dependencies(checks):
        checks += [
            tf.debugging.assert_less_equal(
                tf.reduce_max(mask),
                tf.constant(1, tf.uint8),
                message="mask: values must be 1 (known pixel) or 0 (pixel to sample)",
            ),
            tf.debugging.assert_equal(
                tf.shape(mask)[0], batch, message="mask: needs one row per row of images"
            ),
        ]
    return _checked(mask, checks)
