"""The Trainer module for every family: `run_fn(fn_args)`, TFX's user-module contract.

fn_args.custom_config = {
    "family": "vae",               # a gen_keras.models family
    "preset": "small",             # optional: default (the default), small or reproduce
    "model": {...},                # Config fields over the preset
    "binarization": "binary_static", "binarization_seed": 0,
    "image_shape": [28, 28, 1], "num_classes": 10,   # from the Examples artifact
    "train": {...},                # TrainConfig fields (batch_size, learning_rate, epochs, ...)
}
Reads gzipped tf.Example TFRecords (`fn_args.train_files` / `eval_files`), trains for
exactly `fn_args.train_steps` steps (if given; else train's epochs x steps_per_epoch, None
steps_per_epoch meaning one pass) on the shared harness (checkpoints and TensorBoard
logs in `fn_args.model_run_dir`, so an interrupted Trainer resumes), and writes the
servable SavedModel to `fn_args.serving_model_dir`.
"""

from __future__ import annotations

import dataclasses

from gen_keras import export, models, train
from gen_keras.config import DataConfig, TrainConfig, UsageError, check, from_dict, preset
from gen_keras.data import ImageData, tfrecord_source


def schedule(train_steps: int, full_pass: int) -> tuple[int, int]:
    """(epochs, steps_per_epoch) with epochs * steps_per_epoch == train_steps exactly and
    epochs no longer than one pass over the data where a divisor allows it."""
    check(train_steps > 0, f"train_steps={train_steps} must be > 0")
    for epochs in range(1, train_steps + 1):
        if train_steps % epochs == 0 and train_steps // epochs <= max(full_pass, 1):
            return epochs, train_steps // epochs
    return train_steps, 1


def run_fn(fn_args) -> None:
    """Trains the configured family on the Examples and writes the serving model."""
    cfg = dict(fn_args.custom_config or {})
    check("family" in cfg, "custom_config needs 'family' (e.g. 'vae')")
    family = models.get(cfg["family"])
    fields = cfg.get("model", {})
    name = cfg.get("preset", "default")
    base = preset(family, "default" if name == "Config" else name, **fields)
    model_config = dataclasses.replace(base, **fields)
    data_config = DataConfig(
        dataset="tfrecord",
        binarization=cfg.get("binarization", "binary_static"),
        binarization_seed=cfg.get("binarization_seed", DataConfig.binarization_seed),
        download=False,
        train_split="train",
        eval_split="eval",
    )
    shape, num_classes = cfg.get("image_shape"), cfg.get("num_classes")
    if shape is None or num_classes is None:
        raise UsageError("custom_config needs 'image_shape' and 'num_classes'")
    train_data = ImageData(
        data_config, "train", True, source=tfrecord_source(fn_args.train_files, shape, num_classes)
    )
    eval_data = ImageData(
        data_config, "eval", False, source=tfrecord_source(fn_args.eval_files, shape, num_classes)
    )
    train_fields = from_dict(TrainConfig, cfg.get("train", {}))
    epochs, steps = train_fields.epochs, train_fields.steps_per_epoch
    if fn_args.train_steps and (steps is None or epochs * steps != fn_args.train_steps):
        epochs, steps = schedule(
            int(fn_args.train_steps), train_data.steps_per_epoch(train_fields.batch_size)
        )
    train_config = dataclasses.replace(
        train_fields,
        epochs=epochs,
        steps_per_epoch=steps,
        eval_steps=fn_args.eval_steps,
        model_dir=fn_args.model_run_dir,
        export=False,
    )
    result = train.fit(
        cfg["family"],
        model_config,
        data_config,
        train_config,
        verbose=0,
        train_data=train_data,
        eval_data=eval_data,
    )
    export.save(result.model, fn_args.serving_model_dir)
