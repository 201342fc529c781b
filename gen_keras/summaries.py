"""TensorBoard summaries: image grids, scalar dicts, hparams (PNG files: `gen_keras.png`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from gen_keras import png


def scalars(writer, values: dict, step: int, prefix: str = "") -> None:
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(prefix + name, float(value))


def images(writer, named_images: dict, step: int) -> dict[str, np.ndarray]:
    """Writes each float [N, H, W, C] batch in [0, 1] as one grid image; returns the grids."""
    grids = {}
    with writer.as_default(step=step):
        for name, batch in named_images.items():
            grids[name] = png.grid(batch)
            tf.summary.image(name, grids[name][None], step=step)
    return grids


def hparams(writer, values: dict, trial_id: str) -> None:
    """Records the run's hyperparameters (flattened, scalars and strings only)."""
    clean = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in values.items()}
    with writer.as_default(step=0):
        hp.hparams(clean, trial_id=trial_id)
