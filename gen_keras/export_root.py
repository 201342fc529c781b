"""The export root on disk, without TensorFlow: model names, integer versions, atomic
version renames under a lock, temporaries left by dead exports, and TF Serving's
`models.config`.

Layout: `<export_root>/<model_name>/<integer version>/`. A version is written to a hidden
temporary directory beside it and renamed into place, so a model server polling the base
path never sees a half-written version. `gen_keras.export` writes the SavedModels; this
module only arranges directories, so the serving command line (`gen_keras.serving.cli
config`) runs without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import stat
import tempfile
import time

from gen_keras.config import UsageError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_TMP = ".tmp-"  # prefix of temporaries: .tmp-<host>-<pid>-<random>
ORPHAN_AGE_SECONDS = 24 * 3600  # a .tmp-* of unknown origin older than this is removed


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
