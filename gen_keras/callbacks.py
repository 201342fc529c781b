"""Per-epoch extras as Keras callbacks, used by `model.fit` users and the harness alike:
pictures in TensorBoard (and PNG grids), sample quality (FID/KID) under a classifier.

With `fit` the summary step is the epoch number; the harness passes its global step as
`logs["step"]`.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from gen_keras import metrics, png, rng, runs, summaries


def _writer(log_dir):
    """A TensorBoard writer for log_dir, or one that writes nothing."""
    return tf.summary.create_file_writer(log_dir) if log_dir else tf.summary.create_noop_writer()


def _step(epoch: int, logs) -> int:
    return int((logs or {}).get("step", epoch + 1))


class Pictures(keras.callbacks.Callback):
    """model.image_summaries of a fixed eval batch with a fixed seed, every epoch, as
    TensorBoard images in `log_dir`; the `samples` grid also as PNG in `png_dir`
    (`samples/epoch_NNNN.png` and `samples.png`), so runs can be compared by eye."""

    def __init__(
        self, log_dir=None, data=None, num_images=64, seed=(0, 3), png_dir=None, writer=None
    ):
        super().__init__()
        self.log_dir, self.png_dir, self._writer = log_dir, png_dir, writer
        self.batch = next(iter(data.dataset(num_images)))
        self.seed = tf.constant(seed, tf.int32)

    @property
    def writer(self):
        if self._writer is None:
            self._writer = _writer(self.log_dir)
        return self._writer

    def on_epoch_end(self, epoch, logs=None):
        step = _step(epoch, logs)
        grids = summaries.images(
            self.writer, self.model.image_summaries(self.batch, self.seed), step
        )
        self.writer.flush()
        if self.png_dir and "samples" in grids:
            path = os.path.join(self.png_dir, "samples", f"epoch_{epoch + 1:04d}.png")
            png.write(path, grids["samples"])
            png.write(os.path.join(self.png_dir, "samples.png"), grids["samples"])


def sampler(model):
    """model.sample(seeds, labels) in data space, as one tf.function: keep it to sample the
    same model again without tracing it again (the weights are read when it runs)."""
    spec = model.spec
    return tf.function(lambda s, y: spec.to_data(model.sample(s, y)), reduce_retracing=True)


def sample_images(model, fn, n: int, seed, batch: int = 500) -> np.ndarray:
    """n samples of any model with `sample(seeds, label)` through its `sampler` fn, uint8
    data space [n, H, W, C] (class-balanced labels for a conditional model); row i's seed
    is fold_in(seed, i)."""
    seeds = rng.row_seeds(tf.constant(seed, tf.int32), n)
    labels = model.labels_for(n)
    out = [
        fn(seeds[i : i + batch], None if labels is None else labels[i : i + batch]).numpy()
        for i in range(0, n, batch)
    ]
    return np.concatenate(out)


class SampleQuality(keras.callbacks.Callback):
    """FID, KID, classifier score and class coverage of `num_samples` samples against an
    eval split, under one classifier's features (a `metrics.Classifier`, or the path of a
    classifier export or run); added to the logs, and written to TensorBoard in `log_dir`
    if one is given (the note on which classifier goes to `writer` or `log_dir`).

    Without a classifier (classifier="") it notes once that sample quality is off.
    """

    def __init__(
        self, classifier, data, num_samples=1000, seed=(0, 2), log_dir=None, every=1, writer=None
    ):
        super().__init__()
        self.classifier_arg, self.data = classifier, data
        self.num_samples, self.seed, self.log_dir, self.every = num_samples, seed, log_dir, every
        self._quality = None
        self._writer = writer
        self._noted = False
        self._sampler = None  # the model's sampler, traced once (set_model resets it)

    def set_model(self, model):
        super().set_model(model)
        self._sampler = None

    def load(self) -> metrics.SampleQuality | None:
        """The classifier and the eval split's reference features, loaded on the first call;
        None without a classifier. A bad classifier path raises UsageError here."""
        if not self.classifier_arg:
            return None
        if self._quality is None:
            classifier = self.classifier_arg
            if isinstance(classifier, str):
                classifier = runs.load_classifier(classifier)
            reference = np.concatenate(
                [self.data.spec.to_data(b["image"]).numpy() for b in self.data.dataset(500)]
            )
            self._quality = metrics.SampleQuality(classifier, reference)
        return self._quality

    def evaluate(self, num_samples: int | None = None) -> dict:
        """Every figure of metrics.scores on fresh samples ({} without a classifier)."""
        quality = self.load()
        if quality is None:
            return {}
        if self._sampler is None:  # one trace per model, not one per epoch
            self._sampler = sampler(self.model)
        samples = sample_images(
            self.model, self._sampler, num_samples or self.num_samples, self.seed
        )
        return quality.evaluate(samples)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        step = _step(epoch, logs)
        quality = self.load()
        if quality is None:
            note = (
                "FID/KID are off: no classifier was given (--classifier=<classifier export "
                "or run dir>); no sample-quality figures were computed."
            )
            if not self._noted:
                logging.warning(note)
                self._noted = True
            self._write_text(note, step)
            return
        values = {k: v for k, v in self.evaluate().items() if not k.startswith("class_fraction_")}
        self._write_text(
            f"FID/KID use the features of the classifier {quality.classifier.name} on "
            f"{self.num_samples} samples vs {len(quality.reference)} eval images",
            step,
        )
        if self.log_dir:  # the harness writes the logs it is given itself
            summaries.scalars(self.writer, values, step)
            self.writer.flush()
        if logs is not None:
            logs.update(values)

    @property
    def writer(self):
        if self._writer is None:
            self._writer = _writer(self.log_dir)
        return self._writer

    def set_writer(self, writer) -> None:
        """Where the note on the classifier goes (the harness's eval writer)."""
        self._writer = writer

    def _write_text(self, text: str, step: int) -> None:
        with self.writer.as_default(step=step):
            tf.summary.text("sample_quality", text)
