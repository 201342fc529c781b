"""Masked convolutions: exact causality per mask and colour group, cropping, mask built once."""

import numpy as np
import pytest
import tensorflow as tf

from gen_keras.config import UsageError
from gen_keras.layers import MaskedConv2D, causal_mask, conv_precision, gate, in_precision
from gen_keras.layers.masked import (
    WIDE_FILTERS,
    pointwise_group,
    shift_down,
    unfused_relu,
)

H, W = 5, 7  # distinct sizes: a swapped axis fails


def _jacobian(layer, x):
    """d out[0, i, j, f] / d x[0, i', j', c] as numpy [H, W, F, H, W, C]."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    jac = tape.jacobian(y, x)  # [1, H, W, F, 1, H, W, C]
    return jac.numpy()[0, :, :, :, 0]


def _allowed(mask_type, kernel, groups, cin, cout):
    """Which input (i', j', c) may reach output (i, j, f), as bool [H, W, F, H, W, C]."""
    kh, kw = kernel
    out = np.zeros((H, W, cout, H, W, cin), bool)
    gin, gout = np.arange(cin) // (cin // groups), np.arange(cout) // (cout // groups)
    for i in range(H):
        for j in range(W):
            for di in range(-(kh // 2), kh // 2 + 1):
                for dj in range(-(kw // 2), kw // 2 + 1):
                    a, b = i + di, j + dj
                    if not (0 <= a < H and 0 <= b < W):
                        continue
                    if mask_type == "V":
                        ok = np.full((cout, cin), di <= 0)
                    elif di < 0 or (di == 0 and dj < 0):
                        ok = np.ones((cout, cin), bool)
                    elif di == 0 and dj == 0:
                        ok = gin[None] < gout[:, None]
                        if mask_type == "B":
                            ok |= gin[None] == gout[:, None]
                    else:
                        ok = np.zeros((cout, cin), bool)
                    out[i, j, :, a, b] = ok
    return out


@pytest.mark.parametrize(
    "mask_type, kernel, groups, cin",
    [
        ("A", (7, 7), 1, 1),
        ("B", (3, 3), 1, 4),
        ("A", (3, 5), 3, 3),
        ("B", (3, 3), 3, 6),
        ("A", (1, 5), 3, 3),
        ("B", (1, 3), 2, 4),
        ("B", (1, 1), 3, 6),
        ("V", (3, 5), 1, 2),
    ],
)
def test_gradients_are_exactly_zero_outside_the_mask_and_nonzero_inside(
    mask_type, kernel, groups, cin
):
    cout = 6
    layer = MaskedConv2D(cout, kernel, mask_type, groups, kernel_initializer="random_normal")
    x = np.random.default_rng(0).normal(size=(1, H, W, cin)).astype(np.float32)
    jac = _jacobian(layer, x)
    allowed = _allowed(mask_type, kernel, groups, cin, cout)
    assert np.all(jac[~allowed] == 0.0)  # exactly zero, not small
    assert np.all(jac[allowed] != 0.0)  # every permitted tap is used


def test_kernel_keeps_only_the_taps_a_mask_can_use():
    shapes = {
        ("A", 7): (4, 7, 3, 6),
        ("B", (1, 5)): (1, 3, 3, 6),
        ("B", 1): (1, 1, 3, 6),
        ("V", 3): (2, 3, 3, 6),
    }
    for (mask_type, kernel), shape in shapes.items():
        layer = MaskedConv2D(6, kernel, mask_type)
        layer.build((None, H, W, 3))
        assert tuple(layer.kernel.shape) == shape
    layer = MaskedConv2D(6, 3, "B", color_groups=3)
    layer(tf.zeros([3, H, W, 3]))
    assert layer.count_params() == 2 * 3 * 3 * 6 + 6


def test_mask_is_built_once_and_never_assigned_to_the_variable():
    layer = MaskedConv2D(4, 3, "A")
    layer.build((None, H, W, 2))
    layer.kernel.assign(tf.ones_like(layer.kernel))
    y = layer(tf.ones([1, H, W, 2]))
    np.testing.assert_array_equal(layer.kernel.numpy(), 1.0)  # the variable is untouched
    # interior pixel: 3 taps in the row above + 1 to the left, 2 channels each
    np.testing.assert_array_equal(y[0, 2, 3].numpy(), 8.0)
    expected = causal_mask(2, 3, 2, 4, "A", 1, centre_col=1)
    np.testing.assert_array_equal(layer.masked_kernel().numpy(), expected)


@pytest.mark.parametrize("filters", [8, WIDE_FILTERS])
def test_both_padding_paths_compute_the_masked_convolution_and_its_gradients(filters):
    # narrow convs pad with their own op and convolve VALID, wide ones pass the padding list
    layer = MaskedConv2D(filters, (3, 5), "B")
    layer.build((None, H, W, 3))
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=[1, 2]))
    layer.bias.assign(tf.random.stateless_normal([filters], seed=[5, 6]))
    x = tf.random.stateless_normal([2, H, W, 3], seed=[3, 4])
    weights = tf.random.stateless_normal([2, H, W, filters], seed=[7, 8])
    padding = [[0, 0], [1, 0], [2, 2], [0, 0]]

    def loss_and_grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn()
            loss = tf.reduce_sum(y * weights)
        return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]

    graph = tf.function(layer).get_concrete_function(tf.TensorSpec(x.shape)).graph
    pads = [op for op in graph.get_operations() if op.type == "Pad"]
    assert len(pads) == (1 if filters < WIDE_FILTERS else 0)  # each path is the one taken
    got = loss_and_grads(lambda: layer(x))
    want = loss_and_grads(
        lambda: tf.nn.conv2d(x, layer.masked_kernel(), 1, padding=padding) + layer.bias
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_bias, groups", [(True, 1), (False, 1), (True, 3)])
def test_pointwise_convs_take_matmul_gradients_equal_to_the_convolutions(use_bias, groups):
    layer = MaskedConv2D(6, 1, "B", color_groups=groups, use_bias=use_bias)
    layer.build((None, H, W, 3))
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=[1, 2]))
    x = tf.random.stateless_normal([2, H, W, 3], seed=[3, 4])
    weights = tf.random.stateless_normal([2, H, W, 6], seed=[7, 8])
    variables = [layer.kernel] + ([layer.bias] if use_bias else [])
    if use_bias:
        layer.bias.assign(tf.random.stateless_normal([6], seed=[5, 6]))

    def loss_and_grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * weights)
        return [y, *tape.gradient(loss, [x, *variables])]

    def reference(v):
        y = tf.nn.conv2d(v, layer.masked_kernel(), 1, "VALID")
        return y + layer.bias if use_bias else y

    got, want = loss_and_grads(layer), loss_and_grads(reference)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    if groups > 1:  # the mask still holds: colour group g of the output sees groups <= g
        assert not np.any(got[2].numpy()[0, 0, 1:, :2])  # kernel gradient [1, 1, cin, cout]
    # the gradients are matmuls, not the conv gradient kernels
    graph = tf.function(lambda v: loss_and_grads(layer)).get_concrete_function(x).graph
    types = {op.type for op in graph.get_operations()}
    assert "MatMul" in types
    assert not types & {"Conv2DBackpropFilter", "Conv2DBackpropInput"}, types


def test_shift_down_moves_rows_down_one_and_takes_no_strided_slice_gradient():
    x = tf.random.stateless_normal([2, H, W, 3], seed=[1, 1])
    want = np.concatenate([np.zeros([2, 1, W, 3], np.float32), x.numpy()[:, :-1]], axis=1)
    np.testing.assert_array_equal(shift_down(x).numpy(), want)

    def grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = tf.reduce_sum(shift_down(v) * tf.range(H, dtype=tf.float32)[:, None, None])
        return tape.gradient(y, v)

    # row r of x lands on row r + 1; the last row is dropped
    want_grad = np.broadcast_to(np.append(np.arange(1, H), 0)[:, None, None], [2, H, W, 3])
    np.testing.assert_array_equal(grad(x).numpy(), want_grad)
    graph = tf.function(grad).get_concrete_function(x).graph
    types = {op.type for op in graph.get_operations()}
    assert "StridedSliceGrad" not in types and {"Slice", "Pad"} <= types, types
    assert shift_down(x).shape == x.shape


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_pointwise_group_is_its_convs_called_one_by_one(precision):
    # colour groups (each conv keeps its own mask), one conv without a bias, unbuilt convs
    convs = [
        MaskedConv2D(6, 1, "B", color_groups=3, name="a"),
        MaskedConv2D(3, 1, "B", color_groups=3, use_bias=False, name="b"),
        MaskedConv2D(9, 1, "B", color_groups=3, name="c"),
    ]
    x = tf.random.stateless_normal([2, H, W, 6], seed=[3, 4])
    with conv_precision(precision):
        grouped = pointwise_group(x, convs)  # builds a, b, c in this order
    assert [tuple(c.kernel.shape) for c in convs] == [(1, 1, 6, 6), (1, 1, 6, 3), (1, 1, 6, 9)]
    for i, c in enumerate(convs):
        c.kernel.assign(tf.random.stateless_normal(c.kernel.shape, seed=[1, i]))
        if c.bias is not None:
            c.bias.assign(tf.random.stateless_normal(c.bias.shape, seed=[2, i]))
    weights = [
        tf.random.stateless_normal([2, H, W, c.filters], seed=[7, i]) for i, c in enumerate(convs)
    ]
    variables = [v for c in convs for v in c.trainable_variables]

    def loss_and_grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            with conv_precision(precision):
                ys = fn()
            loss = sum(tf.reduce_sum(y * w) for y, w in zip(ys, weights, strict=True))
        return [*ys, *tape.gradient(loss, [x, *variables])]

    got = loss_and_grads(lambda: pointwise_group(x, convs))
    want = loss_and_grads(lambda: [c(x) for c in convs])
    # bf16: both round the conv's inputs and outputs to bf16, in different sums
    tol = 1e-5 if precision == "float32" else 2e-2
    assert [a.shape for a in got] == [b.shape for b in want]
    for a, b in zip(got, want, strict=True):
        scale = float(tf.reduce_max(tf.abs(b)))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=tol * scale)
    assert grouped[1].shape == (2, H, W, 3)
    with pytest.raises(UsageError, match="1x1 convs only"):
        pointwise_group(x, [MaskedConv2D(4, 3, "B")])


@pytest.mark.parametrize("filters, kernel", [(8, (3, 5)), (WIDE_FILTERS, (3, 3)), (16, 1)])
def test_bfloat16_convs_are_the_float32_convs_to_bf16_rounding_and_only_in_scope(filters, kernel):
    layer = MaskedConv2D(filters, kernel, "B")
    layer.build((None, H, W, 8))
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=[1, 2]))
    layer.bias.assign(tf.random.stateless_normal([filters], seed=[5, 6]))
    x = tf.random.stateless_normal([2, H, W, 8], seed=[3, 4])
    weights = tf.random.stateless_normal([2, H, W, filters], seed=[7, 8])

    def loss_and_grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * weights)
        return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]

    def conv_dtypes(fn):
        graph = tf.function(fn).get_concrete_function(tf.TensorSpec(x.shape)).graph
        return {op.get_attr("T").name for op in graph.get_operations() if op.type == "Conv2D"}

    want = loss_and_grads()
    with conv_precision("bfloat16"):
        got = loss_and_grads()
        assert conv_dtypes(layer) == {"bfloat16"}
    assert conv_dtypes(layer) == {"float32"}  # the scope is left as it was
    assert conv_dtypes(in_precision(lambda v: layer(v), "bfloat16")) == {"bfloat16"}
    assert conv_dtypes(layer) == {"float32"}
    for a, b in zip(got[:3], want[:3], strict=True):  # y and the x and kernel gradients
        assert a.dtype == tf.float32
        scale = float(tf.reduce_max(tf.abs(b)))
        err = float(tf.reduce_max(tf.abs(a - b)))
        # bf16 keeps 8 significant bits (inputs and kernel rounded by <= 2^-9 relative); how
        # sums accumulate depends on the kernel: oneDNN's (AVX-512 BF16) reach 0.51% of scale
        # on these inputs, Eigen's (CPUs without, or TF_ENABLE_ONEDNN_OPTS=0) 2.4%
        assert 0.0 < err < 0.05 * scale, (err, scale)  # not float32 (err 0), not garbage
    # the bias is added in float32 after the conv: its gradient is the float32 one
    np.testing.assert_array_equal(got[3].numpy(), want[3].numpy())
    with pytest.raises(UsageError, match="precision='float16'"):
        with conv_precision("float16"):
            pass


def test_unfused_relu_is_relu_with_relus_gradient():
    x = tf.constant([-2.0, -0.5, 0.0, 0.5, 3.0])
    for fn in (unfused_relu, tf.nn.relu):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * tf.range(1.0, 6.0))
        np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 0.0, 0.5, 3.0])
        np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [0.0, 0.0, 0.0, 4.0, 5.0])


def test_row_and_column_parts_add_up_to_the_convolution():
    layer = MaskedConv2D(5, (3, 5), "B", color_groups=1)
    x = tf.random.stateless_normal([3, H, W, 2], seed=[1, 2])
    y = layer(x).numpy()
    padded = tf.pad(x, [[0, 0], [1, 0], [0, 0], [0, 0]])
    matrix = layer.column_matrix()
    for i in range(H):
        above = layer.from_rows(padded[:, i : i + 1]).numpy()
        row = tf.pad(x[:, i], [[0, 0], [2, 0], [0, 0]])
        for j in range(W):
            got = above[:, j] + layer.from_columns(row[:, j : j + 3], matrix).numpy()
            np.testing.assert_allclose(got, y[:, i, j], rtol=1e-5, atol=1e-5)


def test_gate_keeps_colour_groups_apart():
    features = tf.random.stateless_normal([2, 12], seed=[3, 4])
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = gate(features, groups=3)
    jac = tape.batch_jacobian(out, features).numpy()  # [2, 6, 12]
    for g in range(3):
        assert np.all(jac[:, 2 * g : 2 * g + 2, : 4 * g] == 0)
        assert np.all(jac[:, 2 * g : 2 * g + 2, 4 * g + 4 :] == 0)
    a, b = tf.split(features, 2, axis=-1)
    np.testing.assert_allclose(gate(features), tf.tanh(a) * tf.sigmoid(b))


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError, match="must be odd"):
        MaskedConv2D(4, 4)
    with pytest.raises(UsageError, match="mask_type='C' is not one of"):
        MaskedConv2D(4, 3, "C")
    with pytest.raises(UsageError, match="multiples of color_groups=3"):
        MaskedConv2D(4, 3, "B", color_groups=3)(tf.zeros([1, H, W, 3]))
