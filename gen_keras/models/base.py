"""What the training harness, summaries and export ask of every model family."""

from __future__ import annotations

import keras
import tensorflow as tf


def replica_mean(per_example) -> tf.Tensor:
    """Mean over the local batch, divided by the replica count.

    Keras optimizers sum gradients over replicas, so each replica's loss is scaled by
    1/num_replicas; with one replica this is the plain mean.
    """
    replicas = tf.distribute.get_replica_context()
    n = replicas.num_replicas_in_sync if replicas is not None else 1
    return tf.reduce_mean(per_example) / n


class GenerativeModel(keras.Model):
    """A keras.Model that the harness can train, summarise, checkpoint and export.

    Batches are dicts {"image": float32 [B, H, W, C] in model space, "label": int32 [B],
    "seed": int32 [2]}: the harness adds a fresh stateless seed per step and replica.
    `train_step` / `test_step` return the trackers' results and must track "loss".
    """

    family = "base"

    def __init__(self, spec, config, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.config = config

    def optimizer_variables(self):
        """(optimizer, variables) pairs to build before the first compiled step."""
        return [(self.optimizer, self.trainable_variables)]

    def build_for_training(self, batch) -> None:
        """Creates every layer and optimizer variable (so checkpoints can restore into them)."""
        batch = dict(batch, seed=tf.constant([0, 0], tf.int32))
        self.test_step(batch)
        self.built = True
        for metric in self.metrics:
            metric.reset_state()
        for optimizer, variables in self.optimizer_variables():
            optimizer.build(variables)

    def image_summaries(self, batch, seed) -> dict:
        """{name: float [N, H, W, C] in [0, 1]} pictures for TensorBoard; `samples` first."""
        return {}

    def serving_functions(self) -> dict:
        """{signature name: tf.function with an input_signature}; the first is the default."""
        raise NotImplementedError

    def prepare_metrics(self, data) -> None:
        """Loads what epoch_metrics/final_metrics need (e.g. a feature classifier) before a
        run writes anything, so that a bad path is a usage error on an untouched model_dir."""

    def epoch_metrics(self, data, seed) -> dict:
        """Extra eval scalars after every epoch (e.g. FID on a subsample); {} by default.

        Called inside the eval writer's default context, so a model may also write its own
        summaries (text, histograms) there; the scalars join the epoch's eval metrics.
        """
        return {}

    def final_metrics(self, data, seed) -> dict:
        """Extra end-of-run evaluation on an eval ImageData (e.g. an IWAE bound)."""
        return {}

    def to_unit(self, x):
        """Model-space images -> [0, 1] floats for pictures."""
        if self.spec.mode == "uint8":
            return x / 255.0
        if self.spec.mode == "float_symmetric":
            return (x + 1.0) / 2.0
        return x
