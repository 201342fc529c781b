"""Fault campaign on the training state (issue 14): damaged checkpoints and killed trainers.

    python -m benchmarks.faults_training damage              # ~80 damaged-checkpoint cases
    python -m benchmarks.faults_training kills --kills=6     # SIGKILL at random moments

damage: a small VAE run with ckpt-4, ckpt-8 and ckpt-12; each case copies its checkpoints,
damages them (bytes flipped or files truncated at random offsets, files deleted, the state
file garbled or dangling, every checkpoint damaged) and restores. A case holds when the
restore ends at the newest intact checkpoint with exactly its weights (ckpt-12 if the damage
missed every checksummed byte, else ckpt-8) or, with none intact, raises TrainingError.

kills: trains a small VAE to the end once as a reference, then, per kill, starts the same
command, sends SIGKILL after a random delay, reruns it to the end and compares its
metrics.json with the reference's (bit for bit).

Each command prints a JSON summary and appends it to benchmarks/runs/faults_training.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gen_keras import checkpoints, runs, train  # noqa: E402
from gen_keras import data as data_lib  # noqa: E402
from gen_keras.config import DataConfig, TrainConfig  # noqa: E402
from gen_keras.models import vae  # noqa: E402

DATA = "ckpt-12.data-00000-of-00001"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mnist_dir() -> str:
    return next(str(d) for d in data_lib.SHARED_DATA_DIRS if (d / "mnist").is_dir())


def _flip(path, rng):
    data = bytearray(open(path, "rb").read())
    at = rng.randrange(len(data))
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    open(path, "wb").write(data)


def _truncate(path, rng):
    with open(path, "r+b") as f:
        f.truncate(rng.randrange(os.path.getsize(path)))


def _cases(rng):
    """(name, damage(ckpt_dir), expected steps): the restore may end at any of them."""
    cases = []
    for _ in range(30):
        cases.append(("flip .data", lambda d: _flip(f"{d}/{DATA}", rng), (8,)))
    for _ in range(10):
        cases.append(("flip .index", lambda d: _flip(f"{d}/ckpt-12.index", rng), (8, 12)))
    for _ in range(10):
        cases.append(("truncate .data", lambda d: _truncate(f"{d}/{DATA}", rng), (8,)))
    for _ in range(10):
        cases.append(("truncate .index", lambda d: _truncate(f"{d}/ckpt-12.index", rng), (8,)))
    cases.append(("delete .data", lambda d: os.remove(f"{d}/{DATA}"), (8,)))
    cases.append(("delete .index", lambda d: os.remove(f"{d}/ckpt-12.index"), (8,)))
    for _ in range(5):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        cases.append(
            ("garbage state", lambda d, g=garbage: open(f"{d}/checkpoint", "wb").write(g), (12,))
        )
    dangling = 'model_checkpoint_path: "ckpt-99"\n'
    cases.append(("dangling state", lambda d: open(f"{d}/checkpoint", "w").write(dangling), (12,)))
    for _ in range(5):

        def all_damaged(d):
            for step in (4, 8, 12):
                _flip(f"{d}/ckpt-{step}.data-00000-of-00001", rng)

        cases.append(("all damaged", all_damaged, ()))
    return cases


def damage(args) -> dict:
    tmp = tempfile.mkdtemp()
    data = DataConfig(
        data_dir=_mnist_dir(), train_split="train[:512]", eval_split="test[:64]", download=False
    )
    cfg = TrainConfig(
        batch_size=16, epochs=3, steps_per_epoch=4, eval_steps=2, export=False,
        model_dir=f"{tmp}/run", num_summary_images=8,
    )  # fmt: skip
    train.fit("vae", vae.small(), data, cfg, verbose=0)
    source = f"{tmp}/run/checkpoints"
    model, _ = runs.restore_model(f"{tmp}/run")
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, step=step)
    reference = {}
    for n in (4, 8, 12):
        checkpoint.read(f"{source}/ckpt-{n}").expect_partial()
        reference[n] = [w.copy() for w in model.get_weights()]
    rng = random.Random(args.seed)
    outcomes: dict[str, dict[str, int]] = {}
    for i, (name, hurt, expected) in enumerate(_cases(rng)):
        d = f"{tmp}/case{i}"
        shutil.copytree(source, d)
        hurt(d)
        for w in model.weights:  # anything left from the last case would show
            if "float" in str(w.dtype):
                w.assign(np.full(w.shape, np.nan, w.dtype))
        try:
            got, _ = checkpoints.restore_newest_intact(checkpoint, d, partial=True)
            same = all(
                np.array_equal(a, b)
                for a, b in zip(model.get_weights(), reference[got], strict=True)
            )
            outcome = f"restored ckpt-{got}" if same else f"ckpt-{got} with wrong weights"
            held = got in expected and same
        except train.TrainingError:
            outcome, held = "TrainingError", not expected
        except Exception as e:  # noqa: BLE001 - an escaped exception is a finding
            outcome, held = f"raised {type(e).__name__}", False
        counts = outcomes.setdefault(name, {})
        key = outcome + ("" if held else " (FAILED)")
        counts[key] = counts.get(key, 0) + 1
        shutil.rmtree(d)
    shutil.rmtree(tmp)
    failed = sum(n for c in outcomes.values() for k, n in c.items() if "FAILED" in k)
    return {"campaign": "damage", "cases": len(_cases(random.Random(0))), "failed": failed,
            "outcomes": outcomes}  # fmt: skip


def _command(model_dir):
    return [
        sys.executable, "-m", "trainers.vae", "--config=small", f"--data_dir={_mnist_dir()}",
        "--nodownload", "--train_split=train[:1024]", "--eval_split=test[:128]",
        "--batch_size=32", "--epochs=2", "--steps_per_epoch=15", "--checkpoint_every_steps=1",
        "--noexport", f"--model_dir={model_dir}",
    ]  # fmt: skip


def kills(args) -> dict:
    tmp = tempfile.mkdtemp()
    start = time.monotonic()
    subprocess.run(_command(f"{tmp}/ref"), cwd=REPO, check=True, capture_output=True)
    duration = time.monotonic() - start
    reference = json.load(open(f"{tmp}/ref/metrics.json"))
    rng = random.Random(args.seed)
    results = []
    for i in range(args.kills):
        model_dir = f"{tmp}/k{i}"
        delay = rng.uniform(0.3, 1.0) * duration
        proc = subprocess.Popen(_command(model_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        steps = checkpoints.indexed_steps(f"{model_dir}/checkpoints")
        rerun = subprocess.run(_command(model_dir), cwd=REPO, capture_output=True, text=True)
        metrics = json.load(open(f"{model_dir}/metrics.json")) if rerun.returncode == 0 else None
        results.append({
            "killed_after_s": round(delay, 1),
            "killed_at_step": steps[-1] if steps else 0,
            "rerun_rc": rerun.returncode,
            "bit_exact": metrics == reference,
        })  # fmt: skip
        shutil.rmtree(model_dir)
    shutil.rmtree(tmp)
    held = sum(r["rerun_rc"] == 0 and r["bit_exact"] for r in results)
    return {"campaign": "kills", "kills": args.kills, "held": held, "runs": results,
            "reference_run_s": round(duration, 1)}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", choices=["damage", "kills"])
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    record = (damage if args.campaign == "damage" else kills)(args)
    record["load"] = "shared 2-core machine, under load"
    print(json.dumps(record, indent=1))
    os.makedirs(f"{REPO}/benchmarks/runs", exist_ok=True)
    with open(f"{REPO}/benchmarks/runs/faults_training.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
