"""SavedModel export in the TF Serving layout (the input checks live in `gen_keras.contract`).

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

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from gen_keras.config import UsageError

# What the export is, for tools (TF Serving ignores assets.extra/, except warmup requests).
METADATA = os.path.join("assets.extra", "gen_keras.json")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_TMP = ".tmp-"  # prefix of temporaries: .tmp-<host>-<pid>-<random>
ORPHAN_AGE_SECONDS = 24 * 3600  # a .tmp-* of unknown origin older than this is removed


class ExportError(RuntimeError):
    """The model cannot be exported as it is (e.g. non-finite weights)."""


def check_name(name: str) -> str:
    """Returns name if it is a valid model name ([A-Za-z0-9][A-Za-z0-9_.-]*); else UsageError.

    The name becomes a directory under the export root and a quoted string in models.config:
    anything else could escape the root or break the config for every model.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"model name {name!r} is not allowed: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit (at most 200 characters)"
        )
    return name


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


def versions(model_root: str) -> list[int]:
    """Integer version directories under <export_root>/<model_name>, ascending."""
    if not os.path.isdir(model_root):
        return []
    return sorted(
        int(d)
        for d in os.listdir(model_root)
        if re.fullmatch(r"\d+", d) and os.path.isdir(os.path.join(model_root, d))
    )


def _tmp_prefix() -> str:
    return f"{_TMP}{socket.gethostname()}-{os.getpid()}-"


def _orphaned(path: str) -> bool:
    """True for a temporary whose writer is gone: this host's and its process has exited,
    or of unknown origin and untouched for a day."""
    match = re.fullmatch(r"\.tmp-(.+)-(\d+)-[^-]*", os.path.basename(path))
    if match and match.group(1) == socket.gethostname():
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - os.stat(path).st_mtime > ORPHAN_AGE_SECONDS
    except FileNotFoundError:
        return False


def clean_orphans(directory: str) -> list[str]:
    """Removes temporaries (`.tmp-*`) left in directory by exports that died; returns names."""
    removed = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        path = os.path.join(directory, name)
        if name.startswith(_TMP) and _orphaned(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            removed.append(name)
    return removed


@contextlib.contextmanager
def _locked(export_root: str):
    """An exclusive advisory lock on <export_root>/.lock, held while a version is numbered
    and renamed into place and while models.config is rewritten (hidden: TF Serving and
    exported_models ignore it)."""
    with open(os.path.join(export_root, ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_readable(root: str) -> None:
    """Directories 0755 and files 0644 (at least), so the model server's user can read them."""
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o755)
        for f in files:
            p = os.path.join(dirpath, f)
            os.chmod(p, os.stat(p).st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def write_versioned(model_root: str, write_fn, version: int | None = None) -> str:
    """Calls write_fn(tmp_dir), then renames tmp_dir to model_root/<version> in one step.

    version defaults to one more than the highest existing, chosen under a lock at rename
    time, so concurrent exports get distinct versions. A failure leaves no version
    directory; an existing version is never overwritten.
    """
    os.makedirs(model_root, exist_ok=True)
    clean_orphans(model_root)
    if version is not None and os.path.exists(os.path.join(model_root, str(version))):
        raise FileExistsError(
            f"{os.path.join(model_root, str(version))} exists; exports never overwrite a version"
        )
    tmp = tempfile.mkdtemp(prefix=_tmp_prefix(), dir=model_root)
    try:
        write_fn(tmp)
        _make_readable(tmp)
        with _locked(os.path.dirname(os.path.abspath(model_root))):
            number = version if version is not None else (versions(model_root) or [0])[-1] + 1
            final = os.path.join(model_root, str(number))
            if os.path.exists(final):
                raise FileExistsError(f"{final} exists; exports never overwrite a version")
            os.rename(tmp, final)  # fails if a writer without the lock made final non-empty
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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


MODELS_CONFIG = "models.config"
DOCKER_ROOT = "/models"  # where the tensorflow/serving image sees the export root mounted


def exported_models(export_root: str) -> list[str]:
    """Names of the models under export_root that have at least one integer version (valid
    names only: a directory named otherwise is never written into models.config)."""
    if not os.path.isdir(export_root):
        return []
    return sorted(
        name
        for name in os.listdir(export_root)
        if NAME_PATTERN.fullmatch(name) and versions(os.path.join(export_root, name))
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

    A unique temporary is written, fsynced and renamed over the old file under a lock, so
    a reader sees the old or the new file, never a missing or partial one, and concurrent
    refreshes never drop a model. base_path defaults to /models, the mount point of
    `docker run -v $PWD/saved_models:/models tensorflow/serving`; give the absolute export
    root for a local tensorflow_model_server.
    """
    os.makedirs(export_root, exist_ok=True)
    path = os.path.join(export_root, MODELS_CONFIG)
    with _locked(export_root):
        clean_orphans(export_root)
        text = render_models_config(exported_models(export_root), base_path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), dir=export_root)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(export_root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path
