"""Model families by name: each module has `Config`, `small()`, `build(config, spec, lr)`."""

from __future__ import annotations

import importlib

FAMILIES = ("vae", "autoencoder", "classifier", "gan", "pixelcnn", "pixelrnn", "semisupervised")


def get(family: str):
    """The family's module, e.g. get("vae") is gen_keras.models.vae."""
    if family not in FAMILIES:
        raise ValueError(f"model family {family!r} is not one of {', '.join(FAMILIES)}")
    return importlib.import_module(f"gen_keras.models.{family}")
