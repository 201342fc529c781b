"""TensorBoard summaries: image grids, scalar dicts, hparams; grids also as PNG files."""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp


def grid(images, columns: int | None = None) -> np.ndarray:
    """float [N, H, W, C] in [0, 1] -> uint8 [rows*(H+1)+1, columns*(W+1)+1, C], 1-pixel gaps."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    out = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 0.5, np.float32)
    for i in range(n):
        r, col = divmod(i, columns)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = (
            images[i]
        )
    return (out * 255.0 + 0.5).astype(np.uint8)


def write_png(path: str, image: np.ndarray) -> None:
    """uint8 [H, W, C] -> PNG file, written atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    tf.io.write_file(tmp, tf.io.encode_png(image))
    os.replace(tmp, path)


def scalars(writer, values: dict, step: int, prefix: str = "") -> None:
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(prefix + name, float(value))


def images(writer, named_images: dict, step: int) -> dict[str, np.ndarray]:
    """Writes each float [N, H, W, C] batch in [0, 1] as one grid image; returns the grids."""
    grids = {}
    with writer.as_default(step=step):
        for name, batch in named_images.items():
            grids[name] = grid(batch)
            tf.summary.image(name, grids[name][None], step=step)
    return grids


def hparams(writer, values: dict, trial_id: str) -> None:
    """Records the run's hyperparameters (flattened, scalars and strings only)."""
    clean = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in values.items()}
    with writer.as_default(step=0):
        hp.hparams(clean, trial_id=trial_id)
