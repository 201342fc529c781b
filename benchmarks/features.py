"""Label efficiency of learned features: `python -m benchmarks.features` (~20-40 min, 2 CPUs).

With 10, 100 and 1000 labels per class and the full training set, trains the encoder-shaped
classifier (`classifier.probe`: the AE/VAE conv encoder, then logits on its code, 16-d by
default: `--latent_dim`)
  random    from random initialisation (all layers trained),
  probe     frozen encoder + linear head (a linear probe of the code),
  finetune  initialised from the encoder, all layers trained,
for two encoders pretrained once on the unlabeled training images by the shared harness:
the denoising autoencoder (`autoencoder.reproduce()`) and a VAE's posterior mean (conv VAE).
Every (budget, method, encoder) runs with 3 seeds (a seed picks the labeled subset, the
initialisation and the batches); the test accuracy over the 10k test images is reported
as mean, standard deviation and range. Data: statically binarized MNIST throughout.

    python -m benchmarks.features                        # the full benchmark
    python -m benchmarks.features --pretrain_split='train[:2048]' --pretrain_epochs=1 \
        --labels=10,100 --seeds=2 --steps_scale=0.05 --test_split='test[:1000]'  # a smoke run

Results go to <out>/results.json and a markdown table on stdout. `--minutes` stops starting
new runs once the budget is spent (the table says which did not run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from gen_keras import train, transfer
from gen_keras.config import DataConfig, TrainConfig
from gen_keras.data import ImageData
from gen_keras.models import autoencoder, classifier, vae

flags.DEFINE_string("out", "benchmarks/runs/features", "Pretraining runs and results.json.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the usual search path).")
flags.DEFINE_list("labels", ["10", "100", "1000", "full"], "Labels per class, or 'full'.")
flags.DEFINE_integer("seeds", 3, "Seeds per configuration.")
flags.DEFINE_list("methods", ["random", "probe", "finetune"], "Methods to run.")
flags.DEFINE_list("encoders", ["autoencoder", "vae"], "Encoders for probe and finetune.")
flags.DEFINE_integer("pretrain_epochs", 5, "Epochs of encoder pretraining (resumed if done).")
flags.DEFINE_string("pretrain_split", "train", "Unlabeled images for pretraining.")
flags.DEFINE_string("test_split", "test", "Split the accuracy is measured on.")
flags.DEFINE_float("steps_scale", 1.0, "Multiplies every budget's training steps (smoke runs).")
flags.DEFINE_float("minutes", 60.0, "Start no new run after this many minutes.")
flags.DEFINE_integer("latent_dim", 16, "Code size of both encoders (and of the classifier).")
FLAGS = flags.FLAGS

HIDDEN = 32
# (steps, batch, learning rate) per labels-per-class; None = the full training set.
SCHEDULE = {10: (300, 32), 100: (600, 64), 1000: (1500, 64), None: (940, 128)}
LEARNING_RATE = {"random": 1e-3, "probe": 3e-3, "finetune": 1e-3}


def load(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Statically binarized images float32 [N, 28, 28, 1] and labels int32 [N]."""
    data = ImageData(DataConfig(data_dir=data_dir), split, training=False)
    batches = list(data.dataset(1000))
    x = np.concatenate([b["image"].numpy() for b in batches])
    return x, np.concatenate([b["label"].numpy() for b in batches])


def label_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class, drawn by seed (None: all, shuffled)."""
    rng = np.random.default_rng(seed)
    if per_class is None:
        return rng.permutation(len(labels))
    picks = [
        rng.choice(np.flatnonzero(labels == k), per_class, replace=False) for k in np.unique(labels)
    ]
    return rng.permutation(np.concatenate(picks))


def pretrain(family: str, out: str) -> str:
    """Trains (or resumes) an encoder on unlabeled images with the shared harness."""
    latent = FLAGS.latent_dim
    config = (
        dataclasses.replace(autoencoder.reproduce(), latent_dim=latent, hidden=HIDDEN)
        if family == "autoencoder"
        else vae.Config(latent_dim=latent, hidden=HIDDEN, eval_k=1, export_k=1)
    )
    model_dir = os.path.join(out, f"pretrain_{family}_{latent}d")
    data = DataConfig(data_dir=FLAGS.data_dir, train_split=FLAGS.pretrain_split)
    data = DataConfig(**{**data.__dict__, "eval_split": FLAGS.test_split})
    cfg = TrainConfig(epochs=FLAGS.pretrain_epochs, model_dir=model_dir, export=False)
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = train.fit(family, config, data, cfg, verbose=2)
    print(
        f"pretrained {family} in {time.perf_counter() - start:.0f} s "
        f"({_cpu_seconds() - cpu:.0f} CPU s): {result.final_metrics}"
    )
    return model_dir


def run_one(method, encoder, per_class, seed, train_xy, test_xy, spec, sources) -> float:
    """Trains one classifier on the labeled subset; returns its test accuracy."""
    x, y = train_xy
    steps, batch = SCHEDULE[per_class]
    steps = max(1, int(steps * FLAGS.steps_scale))
    config = classifier.probe(FLAGS.latent_dim, HIDDEN, freeze_trunk=method == "probe")
    keras.utils.set_random_seed(seed)  # the initialisation
    model = classifier.build(config, spec, LEARNING_RATE[method])
    index = label_subset(y, per_class, seed)
    batch = min(batch, len(index))
    model.build_for_training({"image": x[index[:2]], "label": y[index[:2]]})
    if method != "random":
        transfer.init_from_encoder(model, sources[encoder])
    step = tf.function(model.train_step)
    rng = np.random.default_rng(seed + 1000)
    order = np.empty(0, int)
    for i in range(steps):
        if len(order) < batch:  # epochs over the subset, reshuffled
            order = np.concatenate([order, rng.permutation(index)])
        rows, order = order[:batch], order[batch:]
        step({"image": x[rows], "label": y[rows], "seed": tf.constant([seed, i], tf.int32)})
    logits = tf.function(model.call)
    tx, ty = test_xy
    pred = np.concatenate(
        [np.argmax(logits(tx[i : i + 1000]), -1) for i in range(0, len(tx), 1000)]
    )
    return float(np.mean(pred == ty))


def _cpu_seconds() -> float:
    """CPU time of this process (user + system): a load-independent measure of cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def table(results: list[dict], budgets, columns) -> str:
    lines = [
        "| labels per class | " + " | ".join(name for name, _, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for per_class in budgets:
        cells = []
        for _, method, encoder in columns:
            acc = [
                r["accuracy"] * 100
                for r in results
                if r["labels"] == per_class and r["method"] == method and r["encoder"] == encoder
            ]
            spread = f"({min(acc):.2f}-{max(acc):.2f}, n={len(acc)})" if acc else ""
            cells.append(f"{np.mean(acc):.2f} ± {np.std(acc):.2f} {spread}" if acc else "not run")
        lines.append(f"| {per_class} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    start = time.perf_counter()
    os.makedirs(FLAGS.out, exist_ok=True)
    budgets = [None if b == "full" else int(b) for b in FLAGS.labels]
    encoders = FLAGS.encoders if set(FLAGS.methods) - {"random"} else []
    runs = {family: pretrain(family, FLAGS.out) for family in encoders}
    sources = {family: runs.restore_model(d)[0] for family, d in runs.items()}
    train_xy, test_xy = load("train", FLAGS.data_dir), load(FLAGS.test_split, FLAGS.data_dir)
    spec = ImageData(DataConfig(data_dir=FLAGS.data_dir), "test[:1]", training=False).spec
    configs = [
        (method, encoder)
        for method in FLAGS.methods
        for encoder in (["none"] if method == "random" else encoders)
    ]
    results = []
    for per_class in budgets:
        for method, encoder in configs:
            for seed in range(FLAGS.seeds):
                if time.perf_counter() - start > FLAGS.minutes * 60:
                    break
                t0, cpu0 = time.perf_counter(), _cpu_seconds()
                acc = run_one(method, encoder, per_class, seed, train_xy, test_xy, spec, sources)
                seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
                label = "full" if per_class is None else per_class
                results.append(
                    dict(
                        labels=label,
                        method=method,
                        encoder=encoder,
                        seed=seed,
                        accuracy=acc,
                        seconds=seconds,
                    )
                )
                print(
                    f"{label} {method} {encoder} seed {seed}: {acc:.4f} "
                    f"({seconds:.0f} s, {cpu:.0f} CPU s)"
                )
        with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    columns = [(f"{m} ({e})" if m != "random" else "random init", m, e) for m, e in configs]
    print(f"\ntest accuracy (%) over {FLAGS.seeds} seeds, {time.perf_counter() - start:.0f} s:")
    print(table(results, ["full" if b is None else b for b in budgets], columns))


if __name__ == "__main__":
    app.run(main)
