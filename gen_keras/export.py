"""SavedModel export in the TF Serving layout, and the input checks every signature uses.

Layout: `<export_root>/<model_name>/<integer version>/`, written to a hidden temporary
directory beside it and renamed into place, so a model server polling the base path
never sees a half-written version. Signatures are batch-major dicts of named tensors;
randomness comes only from per-row `seed` inputs (int32 [N, 2]); no XLA inside.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile

import keras
import tensorflow as tf

# What the export is, for tools (TF Serving ignores assets.extra/, except warmup requests).
METADATA = os.path.join("assets.extra", "gen_keras.json")
MAX_BATCH = 1024  # rows per request; larger requests are refused with a clear message

SEED_SPEC = tf.TensorSpec([None, 2], tf.int32, name="seed")
LABEL_SPEC = tf.TensorSpec([None], tf.int32, name="label")


def image_spec(spec) -> tf.TensorSpec:
    """uint8 [None, H, W, C] in data space ({0,1} binary, 0..255 otherwise)."""
    return tf.TensorSpec([None, *spec.shape], tf.uint8, name="images")


def _batch_checks(name: str, tensor, batch=None):
    n = tf.shape(tensor)[0]
    checks = [
        tf.debugging.assert_less_equal(
            n, MAX_BATCH, message=f"{name}: at most {MAX_BATCH} rows per request"
        )
    ]
    if batch is not None:
        checks.append(
            tf.debugging.assert_equal(
                n, batch, message=f"{name}: needs one row per row of the first input"
            )
        )
    return checks


def check_images(images, spec):
    """Validates uint8 images [N, H, W, C] against the model's data range; returns them."""
    checks = _batch_checks("images", images) + [
        tf.debugging.assert_less_equal(
            tf.reduce_max(images),
            tf.constant(spec.max_value, tf.uint8),
            message=f"images: pixel values must be in 0..{spec.max_value} for a {spec.mode} model",
        )
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def check_seed(seed, batch=None):
    """Validates int32 seeds [N, 2] (one per row); returns them."""
    with tf.control_dependencies(_batch_checks("seed", seed, batch)):
        return tf.identity(seed)


def check_label(label, num_classes: int, batch=None):
    """Validates int32 class labels [N] in 0..num_classes-1; returns them."""
    checks = _batch_checks("label", label, batch) + [
        tf.debugging.assert_non_negative(label, message="label: must be >= 0"),
        tf.debugging.assert_less(
            label, num_classes, message=f"label: must be < {num_classes} (number of classes)"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(label)


def check_rows(name: str, tensor, batch=None):
    """Validates a float input's batch size (and finiteness); returns it."""
    checks = _batch_checks(name, tensor, batch) + [
        tf.debugging.assert_all_finite(tensor, message=f"{name}: must be finite")
    ]
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def check_mask(mask, batch):
    """Validates a completion mask uint8 [N, H, W, C] (1 = known, 0 = to sample)."""
    checks = [
        tf.debugging.assert_less_equal(
            tf.reduce_max(mask),
            tf.constant(1, tf.uint8),
            message="mask: values must be 1 (known pixel) or 0 (pixel to sample)",
        ),
        tf.debugging.assert_equal(
            tf.shape(mask)[0], batch, message="mask: needs one row per row of images"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(mask)


def versions(model_root: str) -> list[int]:
    """Integer version directories under <export_root>/<model_name>, ascending."""
    if not os.path.isdir(model_root):
        return []
    return sorted(
        int(d)
        for d in os.listdir(model_root)
        if re.fullmatch(r"\d+", d) and os.path.isdir(os.path.join(model_root, d))
    )


def write_versioned(model_root: str, write_fn, version: int | None = None) -> str:
    """Calls write_fn(tmp_dir), then renames tmp_dir to model_root/<version> in one step.

    version defaults to one more than the highest existing. A failure leaves no version
    directory; an existing version is never overwritten.
    """
    os.makedirs(model_root, exist_ok=True)
    if version is None:
        version = (versions(model_root) or [0])[-1] + 1
    final = os.path.join(model_root, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; exports never overwrite a version")
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_root)
    try:
        write_fn(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save(model, path: str) -> None:
    """Writes model.serving_functions() as a SavedModel at path (no versioning).

    The first function (by convention `sample`) is also `serving_default`; generative
    models also get `sample_png`.
    """
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
    }
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, METADATA), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)


def read_metadata(path: str) -> dict:
    """{"family", "spec", "config", "signatures"} of an export written by gen_keras."""
    with open(os.path.join(path, METADATA)) as f:
        return json.load(f)


def export(model, export_root: str, name: str | None = None, version: int | None = None) -> str:
    """Exports a servable SavedModel to <export_root>/<name>/<next version>/ atomically.

    Refreshes <export_root>/models.config; returns the version directory.
    """
    path = write_versioned(
        os.path.join(export_root, name or model.family), lambda tmp: save(model, tmp), version
    )
    write_models_config(export_root)
    return path


def push(saved_model_dir: str, export_root: str, name: str) -> str:
    """Copies an existing SavedModel into <export_root>/<name>/<next version>/ atomically."""

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


MODELS_CONFIG = "models.config"
DOCKER_ROOT = "/models"  # where the tensorflow/serving image sees the export root mounted


def exported_models(export_root: str) -> list[str]:
    """Names of the models under export_root that have at least one integer version."""
    if not os.path.isdir(export_root):
        return []
    return sorted(
        name
        for name in os.listdir(export_root)
        if not name.startswith(".") and versions(os.path.join(export_root, name))
    )


def render_models_config(names: list[str], base_path: str = DOCKER_ROOT) -> str:
    """TF Serving's text-format ModelServerConfig listing `names` under `base_path`."""
    entries = "".join(
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{base_path.rstrip("/")}/{name}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        for name in names
    )
    return f"model_config_list {{\n{entries}}}\n"


def write_models_config(export_root: str, base_path: str = DOCKER_ROOT) -> str:
    """Writes <export_root>/models.config (`--model_config_file`) atomically; returns its path.

    base_path defaults to /models, the mount point of `docker run -v
    $PWD/saved_models:/models tensorflow/serving`; give the absolute export root for a
    local tensorflow_model_server.
    """
    os.makedirs(export_root, exist_ok=True)
    path = os.path.join(export_root, MODELS_CONFIG)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(render_models_config(exported_models(export_root), base_path))
    os.replace(tmp, path)
    return path


def signature(fn, *specs, conditional: bool = False):
    """tf.function(fn) with input_signature specs, plus a trailing `label` if conditional.

    fn's argument names become the SignatureDef's input keys; a conditional model's fn
    takes `label` last (it is None for unconditional models).
    """
    return tf.function(fn, input_signature=[*specs, *([LABEL_SPEC] if conditional else [])])
