"""Semi-supervised MNIST at 10 and 100 labels per class: `python -m benchmarks.semisupervised`.

For each labels-per-class budget, method and seed, one run of `gen_keras.semisupervised.fit`
(the trainer's defaults: train[:50000] with the labeled subset drawn by the seed,
validation train[50000:], dynamic binarization, batch 128 with 32 labeled rows) stopped
after `--minutes_per_run` of training, then measured once on the 10k test images:
  supervised  q(y|x) alone on the labeled images (same convnet, same augmentation)
  m2          M2 + pseudo-label consistency (the default recipe)
  paper_m2    the literal M2 objective (the `reproduce` preset) (no consistency, no augmentation)
  m1m2        M2 on the codes of a conv VAE pretrained once on train[:50000] (M1)
A seed is the labeled draw and the initialisation, so every method of a seed sees the same
labeled images. Prints a markdown table (mean ± std over seeds, %) with the mean wall and
CPU minutes per run; results.json keeps every run. Rerunning resumes finished runs from
their checkpoints (they are not retrained).

    python -m benchmarks.semisupervised --labels=10 --methods=m2 --seeds=1   # one run
    python -m benchmarks.semisupervised --labels=10 --methods=supervised,m2 --seeds=1 \
        --minutes_per_run=1 --test_split='test[:1000]'                      # a smoke run
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time

import numpy as np
from absl import app, flags

from gen_keras import semisupervised, train
from gen_keras.config import DataConfig, TrainConfig
from gen_keras.models import semisupervised as model_lib
from gen_keras.models import vae

flags.DEFINE_string("out", "benchmarks/runs/semisupervised", "Runs and results.json.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the usual search path).")
flags.DEFINE_list("labels", ["10", "100"], "Labels per class.")
flags.DEFINE_integer("seeds", 3, "Seeds per configuration.")
flags.DEFINE_list("methods", ["supervised", "m2", "m1m2"], "supervised, m2, paper_m2, m1m2.")
flags.DEFINE_float("minutes_per_run", 45.0, "Training minutes of every run (the target's budget).")
flags.DEFINE_integer("epochs", 40, "Epoch cap of every run (the minutes usually stop it first).")
flags.DEFINE_integer("pretrain_epochs", 10, "Epochs of the M1 VAE (resumed if done).")
flags.DEFINE_string("test_split", "test", "Split the accuracy is measured on.")
FLAGS = flags.FLAGS

DATA = dict(binarization="binary_dynamic", train_split="train[:50000]", eval_split="train[50000:]")


def _cpu_seconds() -> float:
    """CPU time of this process (user + system): less load-dependent than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pretrain_m1(data: DataConfig) -> str:
    """The conv VAE (default config) on the training split, unlabeled; returns its run dir."""
    model_dir = os.path.join(FLAGS.out, "m1_vae")
    cfg = TrainConfig(epochs=FLAGS.pretrain_epochs, model_dir=model_dir, export=False)
    config = vae.Config(eval_k=1, export_k=1)
    start, cpu = time.perf_counter(), _cpu_seconds()
    train.fit("vae", config, data, cfg, verbose=2)
    print(f"M1 VAE: {time.perf_counter() - start:.0f} s, {_cpu_seconds() - cpu:.0f} CPU s")
    return model_dir


def config_for(method: str, per_class: int, seed: int, m1_dir: str) -> model_lib.Config:
    base = model_lib.reproduce() if method == "paper_m2" else model_lib.Config()
    return dataclasses.replace(
        base,
        method={"paper_m2": "m2"}.get(method, method),
        labels_per_class=per_class,
        label_seed=seed,
        m1_from=m1_dir if method == "m1m2" else "",
    )


def table(results: list[dict], budgets, methods) -> str:
    lines = ["| labels per class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for per_class in budgets:
        cells = []
        for method in methods:
            rows = [r for r in results if r["labels"] == per_class and r["method"] == method]
            if not rows:
                cells.append("not run")
                continue
            acc = [r["test_accuracy"] * 100 for r in rows]
            wall = np.mean([r["seconds"] for r in rows]) / 60
            cpu = np.mean([r["cpu_seconds"] for r in rows]) / 60
            cells.append(
                f"{np.mean(acc):.2f} ± {np.std(acc):.2f} (n={len(acc)}; "
                f"{wall:.0f} min, {cpu:.0f} CPU min)"
            )
        lines.append(f"| {per_class} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    os.makedirs(FLAGS.out, exist_ok=True)
    data = DataConfig(data_dir=FLAGS.data_dir, download=FLAGS.data_dir is None, **DATA)
    m1_dir = pretrain_m1(data) if "m1m2" in FLAGS.methods else ""
    budgets = [int(b) for b in FLAGS.labels]
    results = []
    for per_class in budgets:
        for method in FLAGS.methods:
            for seed in range(FLAGS.seeds):
                name = f"{method}_{per_class}_seed{seed}"
                cfg = TrainConfig(
                    epochs=FLAGS.epochs,
                    seed=seed,
                    eval_steps=20,
                    model_dir=os.path.join(FLAGS.out, name),
                    export=False,
                    checkpoint_every_steps=500,
                    max_train_minutes=FLAGS.minutes_per_run,
                )
                t0, cpu0 = time.perf_counter(), _cpu_seconds()
                result = semisupervised.fit(
                    config_for(method, per_class, seed, m1_dir), data, cfg, FLAGS.test_split, 2
                )
                row = dict(
                    labels=per_class,
                    method=method,
                    seed=seed,
                    step=result.step,
                    test_accuracy=result.final_metrics["test_accuracy"],
                    val_accuracy=result.final_metrics["val_accuracy"],
                    seconds=time.perf_counter() - t0,
                    cpu_seconds=_cpu_seconds() - cpu0,
                )
                results.append(row)
                print(json.dumps(row), flush=True)
                with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
                    json.dump(results, f, indent=1)
    print(f"\ntest accuracy (%) on {FLAGS.test_split}, mean ± std over {FLAGS.seeds} seeds:")
    print(table(results, budgets, FLAGS.methods))


if __name__ == "__main__":
    app.run(main)
