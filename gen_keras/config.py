"""Configuration values shared by every family: data, training, and the usage error."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

DATA_MODES = (
    "binary_static",  # one Bernoulli(pixel/255) draw per image, fixed seed, same every epoch
    "binary_dynamic",  # a fresh Bernoulli(pixel/255) draw every epoch
    "binary_threshold",  # pixel >= 128
    "uint8",  # 256 levels, values 0..255
    "float",  # pixel / 255 in [0, 1]
    "float_symmetric",  # pixel / 127.5 - 1 in [-1, 1]
)
JIT_CHOICES = ("auto", "on", "off")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# TrainConfig fields that change what a run learns: a resume with other values is refused
# unless allow_config_change names them (see gen_keras.train).
LEARNING_FIELDS = ("batch_size", "learning_rate", "seed", "steps_per_epoch")


class UsageError(ValueError):
    """A bad flag, config value or input that the user can fix; trainers exit with code 2."""


def check(condition: bool, message: str) -> None:
    """Raises UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    check(value in choices, f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


def check_positive(name: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    check(value is not None and value > 0, f"{name}={value!r} must be > 0")


def check_finite(name: str, value: float | None) -> None:
    check(value is None or math.isfinite(value), f"{name}={value!r} must be a finite number")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which TFDS dataset to read, where from, and how to turn pixels into model inputs."""

    dataset: str = "mnist"
    binarization: str = "binary_static"
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = True
    train_split: str = "train"
    eval_split: str = "test"
    binarization_seed: int = 0  # the fixed seed of binary_static; not the training seed

    def __post_init__(self):
        check(bool(self.dataset), "dataset must be a TFDS dataset name, e.g. 'mnist'")
        check_choice("binarization", self.binarization, DATA_MODES)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: batch, schedule, seeds, directories, XLA and distribution strategy."""

    batch_size: int = 128
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the training split
    eval_steps: int | None = None  # None: the whole eval split
    learning_rate: float = 1e-3
    seed: int = 0
    model_dir: str = "runs/vae"
    export_dir: str = "saved_models"
    export: bool = True
    jit_compile: str = "auto"
    strategy: str = "default"
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    keep_checkpoints: int = 3
    log_every_steps: int = 50
    num_summary_images: int = 64
    max_train_minutes: float | None = None  # stop training (then evaluate, export) after this
    # On resume, the LEARNING_FIELDS whose change is meant (e.g. a lower learning_rate to
    # fine-tune); any other change to them is refused. Allowed changes are appended to the
    # run record's `history` with the step they took effect at.
    allow_config_change: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "allow_config_change", tuple(self.allow_config_change))
        for name in self.allow_config_change:
            check_choice("allow_config_change", name, LEARNING_FIELDS)
        check_finite("learning_rate", self.learning_rate)
        check_positive("batch_size", self.batch_size)
        check_positive("epochs", self.epochs)
        check_positive("steps_per_epoch", self.steps_per_epoch, allow_none=True)
        check_positive("eval_steps", self.eval_steps, allow_none=True)
        check_positive("learning_rate", self.learning_rate)
        check_positive("keep_checkpoints", self.keep_checkpoints)
        check_positive("log_every_steps", self.log_every_steps)
        check_positive("max_train_minutes", self.max_train_minutes, allow_none=True)
        check(
            self.checkpoint_every_steps >= 0,
            f"checkpoint_every_steps={self.checkpoint_every_steps} must be >= 0",
        )
        check(bool(self.model_dir), "model_dir must be a directory path")
        check_choice("jit_compile", self.jit_compile, JIT_CHOICES)
        check_choice("strategy", self.strategy, STRATEGIES)


def to_dict(*configs) -> dict[str, dict[str, Any]]:
    """{ClassName: fields} for a JSON record of a run."""
    return {type(c).__name__: dataclasses.asdict(c) for c in configs}


def to_json(*configs) -> str:
    return json.dumps(to_dict(*configs), indent=2, sort_keys=True)


def from_dict(cls, fields: dict[str, Any]):
    """Builds cls from a dict, ignoring unknown keys (older or newer runs)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


def replace(config, **overrides):
    """dataclasses.replace that skips overrides whose value is None (flag not given)."""
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
