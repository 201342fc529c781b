"""SavedModel export in the TF Serving layout (the input checks live in `gen_keras.contract`,
the directory layout in `gen_keras.export_root`).

Layout: `<export_root>/<model_name>/<integer version>/`, written to a hidden temporary
directory beside it and renamed into place, so a model server polling the base path
never sees a half-written version. Signatures are batch-major dicts of named tensors;
randomness comes only from per-row `seed` inputs (int32 [N, 2]); no XLA inside.

Safe under concurrency and crashes: two exports of one model at once get distinct versions
(the rename retries the next free version), `models.config` is replaced atomically under
a lock (a reader never sees it missing or half-written), versions are readable by the
server's user (0755 directories, 0644 files), and temporaries left by a killed export are
removed by the next one. Names are checked (no path escapes, no config injection) and
weights must be finite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

# The export root's layout, re-exported: callers use export.* for both halves.
from gen_keras.export_root import DOCKER_ROOT as DOCKER_ROOT
from gen_keras.export_root import MODELS_CONFIG as MODELS_CONFIG
from gen_keras.export_root import check_name as check_name
from gen_keras.export_root import exported_models as exported_models
from gen_keras.export_root import render_models_config as render_models_config
from gen_keras.export_root import versions as versions
from gen_keras.export_root import write_models_config as write_models_config
from gen_keras.export_root import write_versioned as write_versioned

# What the export is, for tools (TF Serving ignores assets.extra/, except warmup requests).
METADATA = os.path.join("assets.extra", "gen_keras.json")


class ExportError(RuntimeError):
    """The model cannot be exported as it is (e.g. non-finite weights)."""


def check_finite(model) -> None:
    """Raises ExportError naming the model's variables that hold NaN or Inf."""
    bad = [
        v.path if hasattr(v, "path") else v.name
        for v in model.variables
        if np.issubdtype(np.dtype(v.dtype), np.floating) and not np.all(np.isfinite(v.numpy()))
    ]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ExportError(
            f"refusing to export: {len(bad)} of {len(model.variables)} variables hold NaN or "
            f"Inf ({shown}); restore an earlier checkpoint or retrain with a lower learning rate"
        )


def save(model, path: str, training: dict | None = None) -> None:
    """Writes model.serving_functions() as a SavedModel at path (no versioning).

    The first function (by convention `sample`) is also `serving_default`; generative
    models also get `sample_png`. Raises ExportError if any weight is NaN or Inf.
    `training` (e.g. {"model_dir", "step", "train_seconds"}) goes into the metadata.
    """
    check_finite(model)
    functions = model.serving_functions()
    if "sample" in functions:
        functions["sample_png"] = _png_signature(functions["sample"], model.spec)
    archive = keras.export.ExportArchive()
    # The network's layers, not the model: its training state (optimizers, metrics, the
    # seed generator of `fit`) has no place in a servable model.
    for layer in model._flatten_layers(include_self=False, recursive=False):
        archive.track(layer)
    archive.add_endpoint("serving_default", functions[next(iter(functions))])
    for endpoint, fn in functions.items():
        archive.add_endpoint(endpoint, fn)
    archive.write_out(path, verbose=False)
    metadata = {
        "family": model.family,
        "spec": model.spec.to_json(),
        "config": dataclasses.asdict(model.config),
        "signatures": ["serving_default", *functions],
        "training": training or {},
    }
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, METADATA), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)


def read_metadata(path: str) -> dict:
    """{"family", "spec", "config", "signatures", "training"} of an export written by
    gen_keras ("training": the run, step and training seconds it came from; {} if not
    known or written before it was recorded)."""
    with open(os.path.join(path, METADATA)) as f:
        return json.load(f)


def export(
    model,
    export_root: str,
    name: str | None = None,
    version: int | None = None,
    training: dict | None = None,
) -> str:
    """Exports a servable SavedModel to <export_root>/<name>/<next version>/ atomically.

    Refreshes <export_root>/models.config; returns the version directory. Raises
    UsageError for a bad name, ExportError for non-finite weights (before writing anything).
    `training` is recorded in the metadata (see `save`).
    """
    name = check_name(name or model.family)
    check_finite(model)
    path = write_versioned(
        os.path.join(export_root, name), lambda tmp: save(model, tmp, training), version
    )
    write_models_config(export_root)
    return path


def push(saved_model_dir: str, export_root: str, name: str) -> str:
    """Copies an existing SavedModel into <export_root>/<name>/<next version>/ atomically."""
    check_name(name)

    def copy(tmp):
        os.rmdir(tmp)  # copytree creates it
        shutil.copytree(saved_model_dir, tmp)

    path = write_versioned(os.path.join(export_root, name), copy)
    write_models_config(export_root)
    return path


def _png_signature(sample, spec):
    """sample_png(seed[, label]) -> png_bytes: each sampled image as a PNG string.

    TF Serving's REST API returns outputs named *_bytes base64-encoded ({"b64": ...}).
    Binary images are scaled to 0/255 so the PNG is visible.
    """
    scale = 255 if spec.binary else 1

    def encode(images):
        return tf.map_fn(
            lambda im: tf.io.encode_png(im * scale), images, fn_output_signature=tf.string
        )

    if len(sample.input_signature) == 1:

        def sample_png(seed):
            return {"png_bytes": encode(sample(seed)["images"])}
    else:

        def sample_png(seed, label):
            return {"png_bytes": encode(sample(seed, label)["images"])}

    return tf.function(sample_png, input_signature=sample.input_signature)
