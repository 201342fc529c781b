"""A semi-supervised run on the shared harness: labeled subset, mixed batches, test accuracy.

`fit(config, data_config, train_config, test_split)`:
1. draws the class-balanced labeled subset of `data_config.train_split` with
   `config.label_seed` (`data.labeled_subset`) and records it in
   `<model_dir>/labeled_examples.json` (a resumed run must draw the same images);
2. trains `models.semisupervised` with `train.fit` on `data.SemiSupervisedData` batches
   (labeled rows first, the rest of the split unlabeled), evaluating every epoch on
   `data_config.eval_split`: a validation slice of the training split, the only data
   anything may be chosen on;
3. measures q(y|x) once on `test_split` after training (reported, never used to choose),
   writes it to TensorBoard (`eval/test/*`) and to metrics.json under "test".
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from gen_keras import evaluation, summaries, train
from gen_keras.config import DataConfig, TrainConfig, UsageError
from gen_keras.data import ImageData, SemiSupervisedData, split_labels
from gen_keras.models import semisupervised

LABELED_RECORD = "labeled_examples.json"


def labeled_data(model_config, data_config: DataConfig) -> SemiSupervisedData:
    """The training split as mixed labeled/unlabeled batches for this config."""
    split = ImageData(data_config, data_config.train_split, training=True)
    return SemiSupervisedData.balanced(
        split,
        model_config.labels_per_class,
        model_config.label_seed,
        model_config.labeled_per_batch,
    )


def record_labeled(model_dir: str, data: SemiSupervisedData, split: str, seed: int) -> dict:
    """Writes (or checks against) <model_dir>/labeled_examples.json; returns the record."""
    labels = split_labels(data.data)
    index = data.labeled_index
    record = {
        "split": split,
        "label_seed": seed,
        "index": index.tolist(),
        "per_class": np.bincount(labels[index], minlength=data.spec.num_classes).tolist(),
    }
    path = os.path.join(model_dir, LABELED_RECORD)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old["index"] != record["index"] or old["split"] != split:
            raise UsageError(
                f"{path} records another labeled subset (split {old['split']!r}, seed "
                f"{old['label_seed']}) than this run draws; use a new --model_dir"
            )
    os.makedirs(model_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f)
    return record


def fit(
    model_config: semisupervised.Config,
    data_config: DataConfig,
    train_config: TrainConfig,
    test_split: str = "test",
    verbose: int = 1,
) -> train.RunResult:
    """Trains (or resumes) a semi-supervised run; final_metrics gains test_* entries."""
    if test_split in (data_config.train_split, data_config.eval_split):
        raise UsageError(
            f"test_split={test_split!r} must differ from train_split and eval_split: the eval "
            "split is the validation slice (for choices), the test split is only reported"
        )
    keras.utils.set_random_seed(train_config.seed)  # the initial weights
    train_data = labeled_data(model_config, data_config)
    record_labeled(
        train_config.model_dir, train_data, data_config.train_split, model_config.label_seed
    )
    eval_data = ImageData(data_config, data_config.eval_split, training=False)
    result = train.fit(
        "semisupervised",
        model_config,
        data_config,
        train_config,
        verbose=verbose,
        train_data=train_data,
        eval_data=eval_data,
    )
    test = evaluation.score_split(
        result.model, ImageData(data_config, test_split, training=False), (0, 0)
    )
    writer = tf.summary.create_file_writer(os.path.join(result.model_dir, "eval"))
    summaries.scalars(writer, test, result.step, prefix="test/")
    writer.flush()
    path = os.path.join(result.model_dir, "metrics.json")
    with open(path) as f:
        metrics = json.load(f)
    metrics["test"] = {**test, "split": test_split}
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    final = {**{f"val_{k}": v for k, v in result.final_metrics.items()}}
    final.update({f"test_{k}": v for k, v in test.items()})
    return dataclasses.replace(result, final_metrics=final)
