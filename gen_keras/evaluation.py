"""Evaluation over a whole split: every family's per-example `score_batch`, averaged.

The model declares what a batch scores (exact NLL, ELBO and IWAE bounds, accuracy,
reconstruction error); this module owns the loop, the seeds and the batch size.
"""

from __future__ import annotations

import tensorflow as tf

from gen_keras import rng
from gen_keras.models.base import GenerativeModel

DEFAULT_BATCH = 256
MEMORY_BUDGET = 2 * 2**30  # bytes of activations one eval batch may take (fits 8 GB runs)


def batch_size_for(model, budget: int = MEMORY_BUDGET) -> int:
    """The eval batch: DEFAULT_BATCH, or fewer rows where the model's per-example memory
    (`eval_bytes_per_example`, e.g. a VAE's k importance samples of 256-way logits per
    pixel) would exceed the budget."""
    per_example = model.eval_bytes_per_example()
    if per_example <= 0:
        return DEFAULT_BATCH
    return int(max(1, min(DEFAULT_BATCH, budget // per_example)))


def score_split(model, data, seed=(0, 2), batch_size: int | None = None) -> dict:
    """Means of model.score_batch over every example of an eval ImageData, plus
    "eval_examples" and the family's derived figures (e.g. bits/dim); {} if the family
    does not override `score_batch` (GANs: see callbacks.SampleQuality).

    Batch i gets the seed fold_in(seed, i), so a result is a pure function of the weights.
    """
    if type(model).score_batch is GenerativeModel.score_batch:
        return {}
    seed = tf.constant(seed, tf.int32)
    batch_size = batch_size or batch_size_for(model)
    score = tf.function(model.score_batch)
    sums: dict[str, float] = {}
    count = 0
    for i, batch in enumerate(data.dataset(batch_size)):
        for name, value in score(batch, rng.fold_in(seed, i)).items():
            sums[name] = sums.get(name, 0.0) + float(tf.reduce_sum(value))
        count += int(batch["image"].shape[0])
    means = {name: total / count for name, total in sums.items()}
    means["eval_examples"] = count
    return model.summarize_scores(means)
