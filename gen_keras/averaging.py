"""Polyak averaging of trained weights (`TrainConfig.ema_decay`), as PixelCNN++ evaluates.

Every optimizer of a model keeps an exponential moving average of the weights it trains
(Keras `use_ema`: the averages are optimizer variables, so checkpoints carry them, and the
first step sets them to the weights). Training never sees them; evaluation, pictures and
exports swap them in. Shared by the harness and by `runs.restore_model`.

The average warms up as TensorFlow's `ExponentialMovingAverage(num_updates=...)` does:
update n (0-based, the optimizer's `iterations`) uses the momentum min(decay, (1 + n) /
(10 + n)). Keras's own average uses `decay` from the second update on, so the first
step's (nearly initial) weights would still hold decay**n of it: 31% after 1,167 steps at
0.999, a short run's whole budget on this CPU. With the warm-up they fade within a few
hundred steps, and the momentum is a function of the checkpointed `iterations`, so a
resumed run averages exactly as a straight one.
"""

from __future__ import annotations

import contextlib
import functools

from keras import ops


def warm_momentum(iterations, decay: float):
    """The momentum of update number `iterations` (a tensor; 0 at the first update, which
    sets the average to the weights)."""
    n = ops.cast(iterations, "float32")
    warm = ops.minimum(decay, (1.0 + n) / (10.0 + n))
    return ops.where(ops.equal(n, 0.0), 0.0, warm)


def _update_averages(optimizer, trainable_variables) -> None:
    """Keras's `_update_model_variables_moving_average` with the warmed-up momentum."""
    momentum = warm_momentum(optimizer.iterations, optimizer.ema_momentum)
    for variable, average in zip(
        trainable_variables, optimizer._model_variables_moving_average, strict=True
    ):
        if average is not None:
            m = ops.cast(momentum, variable.dtype)
            average.assign(ops.add(ops.multiply(m, average), ops.multiply(1 - m, variable)))


def keep_averages(model, decay: float) -> None:
    """Makes every optimizer of `model` keep an exponential moving average of the weights it
    trains (Keras `use_ema`, momentum `decay` after the warm-up; 0 leaves them alone). Call
    it before the optimizers are built: the averages are optimizer variables, created by
    `build`."""
    if decay:
        for optimizer, _ in model.optimizer_variables():
            optimizer.use_ema, optimizer.ema_momentum = True, decay
            optimizer.ema_overwrite_frequency = None  # training never sees the averages
            # The one update Keras makes, warmed up (set past the tracker: a function, not
            # state; the test of the formula fails if Keras stops calling it).
            object.__setattr__(
                optimizer,
                "_update_model_variables_moving_average",
                functools.partial(_update_averages, optimizer),
            )


def swap_averages(model) -> bool:
    """Exchanges the values of the trained weights and their averages, for every optimizer
    that keeps them; returns whether any did. Twice is the identity."""
    swapped = False
    for optimizer, _ in model.optimizer_variables():
        if getattr(optimizer, "use_ema", False):
            # The lists Keras's own SwapEMAWeights callback pairs, in the same order.
            pairs = zip(
                optimizer._trainable_variables,
                optimizer._model_variables_moving_average,
                strict=True,
            )
            for variable, average in pairs:
                held = variable.numpy()
                variable.assign(average)
                average.assign(held)
            swapped = True
    return swapped


@contextlib.contextmanager
def averaged_weights(model):
    """Within the block the model holds its weight averages (if kept); after it, its own."""
    swapped = swap_averages(model)
    try:
        yield model
    finally:
        if swapped:
            swap_averages(model)
