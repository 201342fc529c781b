"""Loading what runs and exports left on disk: run records, restored models, classifiers for
sample quality, samples of an export. Imports the model registry, no model module, and not
the training harness, so models, transfer and the harness can all use it."""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from gen_keras import models
from gen_keras.averaging import keep_averages, swap_averages
from gen_keras.checkpoints import describe_damage, restore_newest_intact, run_checkpoint
from gen_keras.config import UsageError, check, from_dict
from gen_keras.data import DataSpec
from gen_keras.export import versions
from gen_keras.metrics import Classifier
from gen_keras.models.base import dummy_batch

RUN_RECORD = "config.json"
# {step: training seconds of the run when ckpt-<step> was written}, for the checkpoints on
# disk: written by the harness with each checkpoint, so a resumed run knows its clock.
TRAIN_CLOCK = "train_clock.json"


def read_record(model_dir: str) -> dict:
    """The run record (family, model/data/train configs, data spec) of a run directory."""
    path = os.path.join(model_dir, RUN_RECORD)
    check(os.path.exists(path), f"model_dir={model_dir} has no {RUN_RECORD}: not a gen_keras run")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable run record ({e})") from None


def build(family: str, config, spec, learning_rate: float | None = None):
    """models.get(family).build, with what the config names on disk loaded first (the
    pretrained VAE of a semi-supervised M1+M2 model, `m1_from`)."""
    module = models.get(family)
    extra = {}
    if getattr(config, "m1_from", ""):
        extra["m1"] = restore_model(config.m1_from)[0]
    return module.build(config, spec, learning_rate, **extra)


def read_clock(model_dir: str) -> dict[int, float]:
    """{step: training seconds} of a run's checkpoints ({} if it kept no clock); an
    unreadable clock file is named in a warning and read as none."""
    path = os.path.join(model_dir, TRAIN_CLOCK)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return {int(step): float(seconds) for step, seconds in json.load(f).items()}
    except (OSError, ValueError, AttributeError) as e:
        logging.warning("%s is not a readable training clock (%s): read as none", path, e)
        return {}


def restore_model(model_dir: str):
    """Rebuilds a run's model from its record and restores its newest intact checkpoint.

    Returns (model, step); needs no data, so a run can be exported anywhere. Reads only:
    damaged newer checkpoints are skipped with a warning, not moved. A run trained with
    `ema_decay` comes back holding its weight averages, as its own export does.
    """
    record = read_record(model_dir)
    family = models.get(record["family"])
    spec = DataSpec.from_json(record["spec"])
    keras.utils.set_random_seed(record.get("train", {}).get("seed", 0))
    model = build(record["family"], from_dict(family.Config, record["model"]), spec)
    decay = record.get("train", {}).get("ema_decay", 0.0)
    keep_averages(model, decay)
    model.build_for_training(dummy_batch(spec))
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # The averages live in the optimizers, saved under the harness's names for them.
    optimizers = [opt for opt, _ in model.optimizer_variables()] if decay else []
    checkpoint = run_checkpoint(model, step, optimizers)
    directory = os.path.join(model_dir, "checkpoints")
    restored, damaged = restore_newest_intact(checkpoint, directory, partial=True)
    check(restored is not None, f"model_dir={model_dir} has no checkpoint to export")
    if damaged:
        logging.warning(
            "damaged checkpoint %s in %s: using ckpt-%d instead",
            describe_damage(damaged),
            directory,
            restored,
        )
    swap_averages(model)
    return model, int(step.numpy())


def latest_export(path: str) -> str | None:
    """path itself if it is a SavedModel, else its highest integer version that is one."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for v in reversed(versions(path)):
        candidate = os.path.join(path, str(v))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    return None


def load_classifier(path: str) -> Classifier:
    """A Classifier from a classifier export (a version dir or its model root, latest
    version) with a `classify(images) -> logits, features` signature, or from a classifier
    training run directory (its latest checkpoint)."""
    exported = latest_export(path)
    if exported:
        loaded = tf.saved_model.load(exported)
        check(
            "classify" in loaded.signatures,
            f"classifier={path!r}: the export at {exported} has no 'classify' signature "
            f"(it has {', '.join(loaded.signatures)}); give a classifier export",
        )
        sig = loaded.signatures["classify"]
        fn = lambda images: sig(images=images)  # noqa: E731 - keeps `loaded` alive
        fn.loaded = loaded
        return Classifier(fn, os.path.abspath(exported))
    if os.path.isfile(os.path.join(path, RUN_RECORD)):
        model, step = restore_model(path)
        check(
            model.family == "classifier",
            f"classifier={path!r} is a run of the {model.family!r} family, not a classifier",
        )
        classify = model.serving_functions()["classify"]
        return Classifier(classify, f"{os.path.abspath(path)} (run, step {step})")
    raise UsageError(
        f"classifier={path!r} is neither a classifier export (<dir>/<version>/saved_model.pb) "
        "nor a classifier run directory (config.json); train one with "
        "`python -m trainers.classifier`"
    )


def sample_from_export(
    path: str, n: int, seed: int = 0, num_classes: int = 10, batch: int = 500, timing=None
):
    """n samples, uint8 [n, H, W, C], from an export's `sample(seed[, label])` signature.

    Row i uses the seed [seed, i]; conditional exports get class-balanced labels i % K.
    A dict `timing` gets {"seconds": wall time inside the signature calls}.
    """
    exported = latest_export(path)
    check(exported is not None, f"{path!r} holds no SavedModel (<dir>/<version>/saved_model.pb)")
    loaded = tf.saved_model.load(exported)
    check(
        "sample" in loaded.signatures,
        f"the export at {exported} has no 'sample' signature (a generative model's export)",
    )
    sig = loaded.signatures["sample"]
    conditional = "label" in sig.structured_input_signature[1]
    out, seconds = [], 0.0
    for start in range(0, n, batch):
        rows = np.arange(start, min(n, start + batch), dtype=np.int32)
        inputs = {"seed": tf.constant(np.stack([np.full_like(rows, seed), rows], 1))}
        if conditional:
            inputs["label"] = tf.constant(rows % num_classes)
        began = time.perf_counter()
        out.append(sig(**inputs)["images"].numpy())
        seconds += time.perf_counter() - began
    if timing is not None:
        timing["seconds"] = seconds
    return np.concatenate(out)
