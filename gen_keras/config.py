"""Configuration values shared by every family: data, training, and the usage error."""

from __future__ import annotations

import dataclasses
import inspect
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
PRECISIONS = ("float32", "bfloat16")  # TrainConfig.precision, layers.conv_precision
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# TrainConfig fields that change what a run learns: a resume with other values is refused
# unless allow_config_change names them (see gen_keras.train).
LEARNING_FIELDS = (
    "batch_size",
    "learning_rate",
    "lr_warmup_steps",
    "lr_decay",
    "seed",
    "steps_per_epoch",
)


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


def hparam(default: Any, help: str, choices: tuple = ()) -> Any:
    """A Config field declared once: default, help text and (enum-like) choices.

    Trainers derive their absl flags from it (name, type, default, help; DEFINE_enum with
    the choices), and `check_fields` validates the choices.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": tuple(choices)})


def check_fields(config) -> None:
    """Raises UsageError for a field whose value is not one of its declared choices."""
    for field in dataclasses.fields(config):
        if field.metadata.get("choices"):
            check_choice(field.name, getattr(config, field.name), field.metadata["choices"])


PRESETS = ("default", "small", "reproduce")


def preset_names(module) -> list[str]:
    """The presets a family module offers: default always, small and reproduce if defined."""
    return [p for p in PRESETS if p == "default" or hasattr(module, p)]


def preset(module, name: str, **given):
    """A family module's preset Config: default (its `default()` or `Config()`), small (tests)
    or reproduce (published sizes). A preset function with parameters (e.g.
    `pixelcnn.reproduce(arch)`) gets the values of `given` with the same names."""
    fn = getattr(module, "default", module.Config) if name == "default" else None
    if name in PRESETS[1:]:
        fn = getattr(module, name, None)
    family = module.__name__.rsplit(".", 1)[-1]
    known = ", ".join(preset_names(module))
    check(fn is not None, f"config={name!r} is not a preset of {family} ({known})")
    if fn is module.Config:
        return fn()
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in given.items() if k in params})


def check_finite(name: str, value: float | None) -> None:
    check(value is None or math.isfinite(value), f"{name}={value!r} must be a finite number")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which TFDS dataset to read, where from, and how to turn pixels into model inputs."""

    dataset: str = hparam("mnist", "TFDS image dataset (mnist, fashion_mnist, ...).")
    binarization: str = hparam("binary_static", "Data mode.", DATA_MODES)
    data_dir: str | None = hparam(
        None,
        "TFDS data dir (default: TFDS_DATA_DIR, ../shared/tensorflow_datasets, "
        "~/tensorflow_datasets).",
    )
    manual_dir: str | None = hparam(
        None,
        "Folder with the four MNIST-format IDX files (.gz or raw) to build the dataset "
        "from, offline.",
    )
    download: bool = hparam(True, "Let TFDS download a dataset not found locally.")
    train_split: str = hparam("train", "TFDS split to train on.")
    eval_split: str = hparam("test", "TFDS split to evaluate on.")
    binarization_seed: int = hparam(
        0, "The fixed seed of the static binarization draw (not the training seed)."
    )

    def __post_init__(self):
        check(bool(self.dataset), "dataset must be a TFDS dataset name, e.g. 'mnist'")
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: batch, schedule, seeds, directories, XLA and distribution strategy."""

    batch_size: int = hparam(128, "Global batch size.")
    epochs: int = hparam(10, "Epochs to train (in total, also on resume).")
    steps_per_epoch: int | None = hparam(
        None, "Steps per epoch (default: one pass over the training split)."
    )
    eval_steps: int | None = hparam(None, "Eval batches (default: the whole eval split).")
    learning_rate: float = hparam(1e-3, "Adam learning rate (the peak, with a schedule).")
    lr_warmup_steps: int = hparam(
        0, "Linear warm-up: step t trains at learning_rate * min(1, (t + 1) / N) (0: none)."
    )
    lr_decay: float = hparam(
        1.0, "After the warm-up, the learning rate is multiplied by this every step (1: constant)."
    )
    seed: int = hparam(0, "Seed of shuffling and of every random draw.")
    model_dir: str = hparam("runs/vae", "Checkpoints, TensorBoard logs, samples.")
    export_dir: str = hparam("saved_models", "Export root (<dir>/<model>/<version>).")
    export: bool = hparam(True, "Export a servable SavedModel at the end.")
    jit_compile: str = hparam(
        "auto", "XLA: auto is on for GPU/TPU, off on CPU (measured slower there).", JIT_CHOICES
    )
    strategy: str = hparam("default", "tf.distribute strategy.", STRATEGIES)
    precision: str = hparam(
        "float32",
        "Training steps' convolutions: bfloat16 casts the masked ones (pixelcnn, pixelrnn) to "
        "bf16 for the convolution, all else float32, and runs vae arch='resnet''s encoder and "
        "decoder in bf16 (float32 weights, loss and updates); faster on CPUs with BF16 "
        "instructions (AVX512-BF16), several times slower without. Evaluation, sampling "
        "and exports stay float32.",
        PRECISIONS,
    )
    micro_batch: int = hparam(
        0,
        "pixelcnn, pixelrnn and vae: the training step takes each "
        "replica's batch in chunks of this many images and sums their gradients, the same "
        "update with smaller tensors (the vae splits the step's noise with the images; "
        "pytorch-generative's PixelCNN at batch 256 in chunks of "
        "64: 1.17x the images/s on a 2-core CPU). Must divide each replica's batch. 0: whole.",
    )
    intra_op_threads: int = hparam(
        0,
        "Threads one op may use (tf.config.threading; 0: TensorFlow's default, every core). "
        "1 with --micro_batch runs the chunks' small ops side by side, one per core: "
        "pytorch-generative's PixelCNN at batch 64 in chunks of 16 trained at 1,016 img/s "
        "against 847-860 for whole batches at the default on 2 cores. Set before TensorFlow "
        "runs its first op "
        "(the trainers do); a process already running refuses another value with one line.",
    )
    checkpoint_every_steps: int = hparam(
        0, "Also checkpoint every N steps (0: only at the end of each epoch)."
    )
    keep_checkpoints: int = hparam(3, "Checkpoints kept on disk.")
    log_every_steps: int = hparam(50, "Scalar summaries every N steps.")
    num_summary_images: int = hparam(64, "Images in each TensorBoard picture grid.")
    max_train_minutes: float | None = hparam(
        None,
        "Stop after this many minutes of training in this invocation (evaluation, "
        "checkpoints and the first step, which traces, do not count), then evaluate and export.",
    )
    ema_decay: float = hparam(
        0.0,
        "Polyak averaging: every optimizer keeps an exponential moving average of the weights "
        "it trains, with this decay (e.g. 0.999, warmed up as min(decay, (1+n)/(10+n)) at "
        "update n), and evaluation, pictures, the final figures and the export use the "
        "averages (0: off). Fixed for a run.",
    )
    allow_config_change: tuple[str, ...] = hparam(
        (),
        "On resume, the learning fields whose change is meant (batch_size, learning_rate, "
        "seed, steps_per_epoch); recorded in config.json's history.",
    )

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
        check(0.0 <= self.ema_decay < 1.0, f"ema_decay={self.ema_decay} must be in [0, 1)")
        check(self.lr_warmup_steps >= 0, f"lr_warmup_steps={self.lr_warmup_steps} must be >= 0")
        check(0.0 < self.lr_decay <= 1.0, f"lr_decay={self.lr_decay} must be in (0, 1]")
        check(
            self.checkpoint_every_steps >= 0,
            f"checkpoint_every_steps={self.checkpoint_every_steps} must be >= 0",
        )
        check(bool(self.model_dir), "model_dir must be a directory path")
        check_fields(self)


def from_dict(cls, fields: dict[str, Any]):
    """Builds cls from a dict, ignoring unknown keys (older or newer runs)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


def replace(config, **overrides):
    """dataclasses.replace that skips overrides whose value is None (flag not given)."""
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
