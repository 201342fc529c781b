"""Model families by name: each module has `Config`, presets and `build(config, spec, lr)`.

model = models.build("pixelcnn", config="small", spec=data.load(...).spec)
model.fit(...)   # compiled with the family's default optimizer(s) and learning rate
"""

from __future__ import annotations

from gen_keras.config import UsageError, preset

# Every family is imported here, so its model class is registered for keras.models.load_model.
from gen_keras.models import (
    autoencoder,
    classifier,
    gan,
    pixelcnn,
    pixelrnn,
    semisupervised,
    vae,
)
from gen_keras.models.base import dummy_batch

_MODULES = {
    "vae": vae,
    "autoencoder": autoencoder,
    "classifier": classifier,
    "gan": gan,
    "pixelcnn": pixelcnn,
    "pixelrnn": pixelrnn,
    "semisupervised": semisupervised,
}
FAMILIES = tuple(_MODULES)


def get(family: str):
    """The family's module, e.g. get("vae") is gen_keras.models.vae."""
    if family not in _MODULES:
        raise UsageError(f"model family {family!r} is not one of {', '.join(FAMILIES)}")
    return _MODULES[family]


def config_for(family: str, config=None):
    """A family's Config from a preset name (None: "default") or a Config (returned as is)."""
    module = get(family)
    if config is None or isinstance(config, str):
        return preset(module, config or "default")
    if not isinstance(config, module.Config):
        raise UsageError(
            f"config must be a preset name or a gen_keras.models.{family}.Config, "
            f"got {type(config).__name__}"
        )
    return config


def build(family: str, config=None, *, spec, learning_rate: float | None = None):
    """A built, compiled model of `family` for data described by `spec` (a DataSpec,
    e.g. `data.load(...).spec`); config: a preset name ("default", "small", "reproduce")
    or the family's Config. Seed weights with `keras.utils.set_random_seed` first."""
    if spec is None:
        raise UsageError("spec= is required: the DataSpec of the data, e.g. data.load(...).spec")
    model = get(family).build(config_for(family, config), spec, learning_rate)
    model.build_for_training(dummy_batch(spec))
    return model
