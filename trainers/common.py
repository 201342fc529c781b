"""Trainer flags derived from config dataclasses (the shared DataConfig and TrainConfig, a
family's Config), and the run wrapper that turns errors into exit codes."""

from __future__ import annotations

import dataclasses
import sys
import typing

from absl import app, flags, logging

from gen_keras.config import DataConfig, TrainConfig, UsageError, preset, preset_names
from gen_keras.train import Preempted, TrainingError

FLAGS = flags.FLAGS


# Per-family defaults of the shared flags: what `python -m trainers.<family>` trains with.
DEFAULTS = {
    "vae": (TrainConfig(epochs=12, batch_size=128, model_dir="runs/vae"), DataConfig()),
    "autoencoder": (
        TrainConfig(epochs=5, batch_size=128, model_dir="runs/autoencoder"),
        DataConfig(),
    ),
    "classifier": (
        TrainConfig(epochs=6, batch_size=128, model_dir="runs/classifier"),
        DataConfig(binarization="float"),
    ),
    "gan": (
        TrainConfig(epochs=5, batch_size=64, learning_rate=2e-4, model_dir="runs/gan"),
        DataConfig(binarization="float_symmetric"),
    ),
    "pixelcnn": (TrainConfig(epochs=1, batch_size=64, model_dir="runs/pixelcnn"), DataConfig()),
    "pixelrnn": (TrainConfig(epochs=1, batch_size=32, model_dir="runs/pixelrnn"), DataConfig()),
    "semisupervised": (
        TrainConfig(epochs=30, batch_size=128, model_dir="runs/semisupervised"),
        DataConfig(
            binarization="binary_dynamic", train_split="train[:50000]", eval_split="train[50000:]"
        ),
    ),
}
_DEFINE = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    tuple: lambda name, default, help_text: flags.DEFINE_list(name, list(default), help_text),
}


def flag_kinds(cls) -> dict[str, tuple[type, tuple]]:
    """{field: (flag type, choices)} of a Config dataclass; `T | None` fields are type T."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if typing.get_origin(hint) is tuple:  # tuple[str, ...]: a comma-separated list
            out[field.name] = (tuple, field.metadata.get("choices", ()))
            continue
        kinds = typing.get_args(hint) or (hint,)
        kinds = [t for t in kinds if t is not type(None)]
        if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
            raise TypeError(f"{cls.__name__}.{field.name}: no flag type for {hints[field.name]}")
        if not field.metadata.get("help"):
            raise TypeError(f"{cls.__name__}.{field.name} has no help: declare it with hparam()")
        out[field.name] = (kinds[0], field.metadata.get("choices", ()))
    return out


def define_config_flags(config) -> None:
    """One flag per field of a Config dataclass instance: its type, the instance's value as
    default, the field's help, DEFINE_enum for fields declared with choices."""
    kinds = flag_kinds(type(config))
    for field in dataclasses.fields(config):
        kind, choices = kinds[field.name]
        default, help_text = getattr(config, field.name), field.metadata["help"]
        if choices:
            flags.DEFINE_enum(field.name, default, [str(c) for c in choices], help_text)
        else:
            _DEFINE.get(kind, flags.DEFINE_string)(field.name, default, help_text)


def define_flags(family: str) -> None:
    """The shared flags (every DataConfig and TrainConfig field) with the family's defaults."""
    family_train, family_data = DEFAULTS[family]
    define_config_flags(family_data)
    define_config_flags(family_train)


def define_model_flags(module, presets_help: str) -> None:
    """--config (the module's presets) and one flag per field of its Config; the flags'
    defaults are Config()'s, and a preset's values win over every flag not given."""
    flags.DEFINE_enum(
        "config", "default", preset_names(module), f"{presets_help} {preset_values(module)}"
    )
    define_config_flags(module.Config())


def preset_values(module) -> str:
    """What each preset sets over the flags' defaults (Config()'s), for --config's help: the
    flags below show Config()'s values, and a preset's win over every flag not given."""
    base = dataclasses.asdict(module.Config())
    parts = []
    for name in preset_names(module):
        values = dataclasses.asdict(preset(module, name))
        changed = [f"{k}={v}" for k, v in values.items() if v != base[k]]
        parts.append(f"{name}: {', '.join(changed) or 'none'}")
    return (
        "What each preset sets over the flags' defaults (a given flag wins): "
        + "; ".join(parts)
        + "."
    )


def define_union_model_flags(modules) -> None:
    """One flag per field name of the modules' Configs (for a trainer of several families):
    default None (the preset's value), the union of the choices, each family's help."""
    fields: dict[str, tuple[type, list, list]] = {}
    for module in modules:
        family, kinds = module.__name__.rsplit(".", 1)[-1], flag_kinds(module.Config)
        for field in dataclasses.fields(module.Config):
            kind, choices = kinds[field.name]
            known = fields.setdefault(field.name, (kind, [], []))
            if known[0] is not kind:
                raise TypeError(f"{field.name} is a {known[0]} and a {kind} ({family})")
            known[1].extend(c for c in map(str, choices) if c not in known[1])
            known[2].append(f"{family}: {field.metadata['help']}")
    for name, (kind, choices, helps) in fields.items():
        help_text = " | ".join(helps)
        if choices:
            flags.DEFINE_enum(name, None, choices, help_text)
        else:
            _DEFINE.get(kind, flags.DEFINE_string)(name, None, help_text)


def family_fields(module, modules) -> dict:
    """The given model flags for the family `module`; a given flag that is a field of
    another family's Config only is a UsageError."""
    mine = {f.name for f in dataclasses.fields(module.Config)}
    family = module.__name__.rsplit(".", 1)[-1]
    for other in modules:
        for field in dataclasses.fields(other.Config):
            if field.name not in mine and FLAGS[field.name].present:
                raise UsageError(
                    f"--{field.name} is not a {family} hyperparameter (its fields: "
                    f"{', '.join(sorted(mine))})"
                )
    return given(module.Config)


def _values(cls) -> dict:
    return {f.name: FLAGS[f.name].value for f in dataclasses.fields(cls) if f.name in FLAGS}


def given(cls) -> dict:
    """{field: flag value} of cls's fields whose flags were given on the command line."""
    return {
        f.name: FLAGS[f.name].value
        for f in dataclasses.fields(cls)
        if f.name in FLAGS and FLAGS[f.name].present
    }


def data_config() -> DataConfig:
    return DataConfig(**_values(DataConfig))


def train_config() -> TrainConfig:
    return TrainConfig(**_values(TrainConfig))


def model_config(module):
    """The --config preset of a family module with the fields whose flags were given."""
    fields = given(module.Config)
    return dataclasses.replace(preset(module, FLAGS.config, **fields), **fields)


def _parse(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)


def run(main) -> None:
    """app.run(main) where bad flags or configs exit 2, training failures exit 1, one line each."""

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
