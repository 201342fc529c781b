"""Polyak averaging of trained weights (`TrainConfig.ema_decay`), as PixelCNN++ evaluates.

Every optimizer of a model keeps an exponential moving average of the weights it trains
(Keras `use_ema`: the averages are optimizer variables, so checkpoints carry them, and the
first step sets them to the weights). Training never sees them; evaluation, pictures and
exports swap them in. Shared by the harness and by `runs.restore_model`.
"""

from __future__ import annotations

import contextlib


def keep_averages(model, decay: float) -> None:
    """Makes every optimizer of `model` keep an exponential moving average of the weights it
    trains (Keras `use_ema`, momentum `decay`; 0 leaves them alone). Call it before the
    optimizers are built: the averages are optimizer variables, created by `build`."""
    if decay:
        for optimizer, _ in model.optimizer_variables():
            optimizer.use_ema, optimizer.ema_momentum = True, decay
            optimizer.ema_overwrite_frequency = None  # training never sees the averages


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
