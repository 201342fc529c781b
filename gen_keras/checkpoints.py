"""Checkpoint files on disk: find the newest intact one, set damaged ones aside, write the
state file, clean half-written saves. Used by the harness (resume) and `runs` (export)."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import tensorflow as tf

CKPT_FILE = re.compile(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)")
CKPT_TEMP = re.compile(r"ckpt-\d+_temp")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last checkpoint is intact."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def run_checkpoint(model, step, optimizers=()) -> tf.train.Checkpoint:
    """The object graph of a run's checkpoints: `model`, the global `step` and each optimizer
    as `optimizer_<i>` (in `model.optimizer_variables()` order). The harness writes and
    resumes it; `runs.restore_model` reads it (with the optimizers only when it needs their
    weight averages: a partial restore)."""
    return tf.train.Checkpoint(
        model=model, step=step, **{f"optimizer_{i}": opt for i, opt in enumerate(optimizers)}
    )


def checkpoint_files(directory: str) -> dict[int, list[str]]:
    """{step: paths of its ckpt-<step>.index and .data-* files} found in directory."""
    found: dict[int, list[str]] = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            match = CKPT_FILE.fullmatch(name)
            if match:
                found.setdefault(int(match[1]), []).append(os.path.join(directory, name))
    return found


def indexed_steps(directory: str) -> list[int]:
    """Steps with a ckpt-<step>.index file, oldest first."""
    return sorted(
        n
        for n, paths in checkpoint_files(directory).items()
        if any(p.endswith(".index") for p in paths)
    )


def damage(prefix: str) -> str | None:
    """Why the checkpoint at prefix cannot be trusted, or None when it is intact.

    Reads every tensor: the bundle reader checks each against its stored checksum, so a
    truncated, flipped or missing file shows here, not half-way through a restore; a
    non-finite float tensor also disqualifies it (it would resume into NaN).
    """
    if not os.path.exists(prefix + ".index"):
        return "no .index file"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in sorted(reader.get_variable_to_dtype_map().items()):
            value = reader.get_tensor(name)
            if dtype.is_floating and not np.isfinite(value).all():
                return f"{name} is not finite"
    except Exception as e:  # noqa: BLE001 - the reader raises many kinds; any one disqualifies
        return first_line(e)
    return None


def restore_newest_intact(checkpoint, directory: str, partial: bool = False):
    """Restores the newest intact checkpoint of directory into `checkpoint`.

    Returns (its step, or None if the directory holds none, {step: why} of the newer ones
    found damaged). Raises TrainingError when the directory holds checkpoints (an .index
    file, or a `checkpoint` state file naming one) but none of them is intact: starting
    again at step 0 would silently throw a run away.
    """
    files = checkpoint_files(directory)
    damaged: dict[int, str] = {}
    for n in sorted(files, reverse=True):
        prefix = os.path.join(directory, f"ckpt-{n}")
        why = damage(prefix)
        if why is None:
            try:
                status = checkpoint.read(prefix)
                if partial:
                    status.expect_partial()
                status.assert_existing_objects_matched()
                return n, damaged
            except (tf.errors.OpError, ValueError, AssertionError) as e:
                why = first_line(e)
        damaged[n] = why
    if indexed_steps(directory) or os.path.exists(os.path.join(directory, "checkpoint")):
        listing = "; ".join(f"ckpt-{n}: {why}" for n, why in damaged.items())
        raise TrainingError(
            f"{directory} holds no intact checkpoint to resume from "
            f"({listing or 'a checkpoint state file but no ckpt-<step>.index file'}); "
            "move the directory away to start again, or put back a backup"
        )
    return None, damaged


def describe_damage(damaged: dict) -> str:
    return ", ".join(f"ckpt-{n} ({why})" for n, why in sorted(damaged.items(), reverse=True))


def move_aside(directory: str, steps) -> str:
    """Moves the files of the given checkpoint steps into directory/damaged/; returns it."""
    target = os.path.join(directory, "damaged")
    os.makedirs(target, exist_ok=True)
    files = checkpoint_files(directory)
    for n in steps:
        for path in files.get(n, []):
            dest = os.path.join(target, os.path.basename(path))
            k = 1
            while os.path.exists(dest):
                dest, k = os.path.join(target, f"{os.path.basename(path)}.{k}"), k + 1
            os.replace(path, dest)
    return target


def write_state(directory: str) -> None:
    """The `checkpoint` state file that tf.train.latest_checkpoint reads, from the .index
    files on disk (only other tools read it: restore scans the files itself)."""
    steps = indexed_steps(directory)
    path = os.path.join(directory, "checkpoint")
    if not steps:
        if os.path.exists(path):
            os.remove(path)
        return
    lines = [f'model_checkpoint_path: "ckpt-{steps[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{n}"' for n in steps]
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def clean_temp(directory: str) -> None:
    """Removes ckpt-<step>_temp directories, left by a save that was killed half-way."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if CKPT_TEMP.fullmatch(name):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def non_finite(variables) -> str | None:
    """The path of the first variable holding a NaN or an infinity, or None."""
    floating = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    if not floating or bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in floating])):
        return None
    for v in floating:
        if not bool(tf.reduce_all(tf.math.is_finite(v))):
            return getattr(v, "path", v.name)
    return None
