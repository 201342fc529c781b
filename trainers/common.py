"""Flags shared by every trainer, and the run wrapper that turns errors into exit codes."""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from gen_keras.config import (
    DATA_MODES,
    JIT_CHOICES,
    STRATEGIES,
    DataConfig,
    TrainConfig,
    UsageError,
)

FLAGS = flags.FLAGS


def define_flags(train: TrainConfig, data: DataConfig | None = None) -> None:
    """Defines the shared flags with a family's defaults."""
    data = data or DataConfig()
    flags.DEFINE_string("dataset", data.dataset, "TFDS image dataset (mnist, fashion_mnist, ...).")
    flags.DEFINE_string(
        "data_dir",
        data.data_dir,
        "TFDS data dir (default: TFDS_DATA_DIR, "
        "../shared/tensorflow_datasets, ~/tensorflow_datasets).",
    )
    flags.DEFINE_string(
        "manual_dir",
        data.manual_dir,
        "Folder with the four MNIST-format IDX "
        "files (.gz or raw) to build the dataset from, offline.",
    )
    flags.DEFINE_bool("download", data.download, "Let TFDS download a dataset not found locally.")
    flags.DEFINE_enum("binarization", data.binarization, DATA_MODES, "Data mode.")
    flags.DEFINE_string("train_split", data.train_split, "TFDS split to train on.")
    flags.DEFINE_string("eval_split", data.eval_split, "TFDS split to evaluate on.")
    flags.DEFINE_integer("batch_size", train.batch_size, "Global batch size.")
    flags.DEFINE_integer("epochs", train.epochs, "Epochs to train (in total, also on resume).")
    flags.DEFINE_integer(
        "steps_per_epoch",
        train.steps_per_epoch,
        "Steps per epoch (default: one pass over the training split).",
    )
    flags.DEFINE_integer("eval_steps", train.eval_steps, "Eval batches (default: all).")
    flags.DEFINE_float("learning_rate", train.learning_rate, "Adam learning rate.")
    flags.DEFINE_integer("seed", train.seed, "Seed of shuffling and of every random draw.")
    flags.DEFINE_string("model_dir", train.model_dir, "Checkpoints, TensorBoard logs, samples.")
    flags.DEFINE_string("export_dir", train.export_dir, "Export root (<dir>/<model>/<version>).")
    flags.DEFINE_bool("export", train.export, "Export a servable SavedModel at the end.")
    flags.DEFINE_enum(
        "jit_compile",
        train.jit_compile,
        JIT_CHOICES,
        "XLA: auto is on for GPU/TPU, off on CPU (measured slower there).",
    )
    flags.DEFINE_enum("strategy", train.strategy, STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_integer(
        "checkpoint_every_steps",
        train.checkpoint_every_steps,
        "Also checkpoint every N steps (0: only at epoch ends).",
    )
    flags.DEFINE_integer(
        "log_every_steps", train.log_every_steps, "Scalar summaries every N steps."
    )
    flags.DEFINE_list(
        "allow_config_change",
        list(train.allow_config_change),
        "On resume, the learning fields whose change is meant (batch_size, learning_rate, "
        "seed, steps_per_epoch); recorded in config.json's history.",
    )
    flags.DEFINE_float(
        "max_train_minutes",
        train.max_train_minutes,
        "Stop training after this many minutes of this run, then evaluate and export.",
    )


def _values(cls) -> dict:
    return {f.name: FLAGS[f.name].value for f in dataclasses.fields(cls) if f.name in FLAGS}


def data_config() -> DataConfig:
    return DataConfig(**_values(DataConfig))


def train_config() -> TrainConfig:
    return TrainConfig(**_values(TrainConfig))


def model_config(base):
    """base (a preset Config) with the fields whose flags were given on the command line."""
    given = {
        f.name: FLAGS[f.name].value
        for f in dataclasses.fields(base)
        if f.name in FLAGS and FLAGS[f.name].present
    }
    return dataclasses.replace(base, **given)


def _parse(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)


def run(main) -> None:
    """app.run(main) where bad flags or configs exit 2, training failures exit 1, one line each."""
    from gen_keras.train import Preempted, TrainingError

    def guarded(argv):
        logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except UsageError as e:
            sys.stderr.write(f"error: {e}\n")
            sys.exit(2)
        except TrainingError as e:
            sys.stderr.write(f"error: {e}\n")
            sys.exit(1)
        except Preempted as e:
            sys.stderr.write(f"{e}\n")
            sys.exit(Preempted.exit_code)

    app.run(guarded, flags_parser=_parse)


def verbosity() -> int:
    """Keras progress bar mode: live bar on a terminal, one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


def report(result) -> None:
    """Prints where the run's results are and its final metrics."""
    print(
        "final: "
        + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in result.final_metrics.items()
        )
    )
    print(f"step {result.step}; TensorBoard: tensorboard --logdir {result.model_dir}")
    if result.export_path:
        print(f"exported: {result.export_path}")
