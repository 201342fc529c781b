"""Label efficiency of learned features: `python -m benchmarks.features` (~20-40 min, 2 CPUs).

With 10, 100 and 1000 labels per class and the full training split, trains the
encoder-shaped classifier (`classifier.probe`: the AE/VAE conv encoder, then logits on its
code, 16-d by default: `--latent_dim`)
  random    from random initialisation (all layers trained),
  probe     frozen encoder + linear head (a linear probe of the code),
  finetune  initialised from the encoder, all layers trained,
for two encoders pretrained once on the unlabeled training split by the shared harness:
the denoising autoencoder (`autoencoder.reproduce()`) and a VAE's posterior mean (conv VAE).
Every (budget, method, encoder) runs with 3 seeds; the test accuracy over the 10k test
images is reported as mean, standard deviation and range. Data: statically binarized MNIST.

One table with the semi-supervised models: a seed draws the labeled subset with
`data.labeled_subset(labels of --train_split, per_class, seed)`, the draw of
`trainers.semisupervised --label_seed` (train[:50000] by default; validation train[50000:]),
so `--semisupervised_runs=GLOB[,GLOB]` can add finished runs of `trainers.semisupervised` or
`benchmarks.semisupervised` (M2, M1+M2, and `supervised`, the labels-only baseline with
M2's convnet and augmentation) as columns of the same table. Each such run's recorded
labeled images (`labeled_examples.json`) are checked against this script's draw for its
seed, and its test split against `--test_split`; a run that differs is refused, one still
running is listed as unfinished.

    python -m benchmarks.features                        # the full benchmark
    python -m benchmarks.features --labels=10,100 \
        --semisupervised_runs='runs/m2_*,benchmarks/runs/semisupervised/*_seed*'
    python -m benchmarks.features --pretrain_split='train[:2048]' --pretrain_epochs=1 \
        --labels=10,100 --seeds=2 --steps_scale=0.05 --test_split='test[:1000]'  # a smoke run

Results go to <out>/results.json and a markdown table on stdout. `--minutes` stops starting
new runs once the budget is spent (the table says which did not run).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import resource
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from gen_keras import runs, train, transfer
from gen_keras.config import DataConfig, TrainConfig, UsageError, check
from gen_keras.data import ImageData, labeled_subset
from gen_keras.models import autoencoder, classifier, vae
from gen_keras.semisupervised import LABELED_RECORD

flags.DEFINE_string("out", "benchmarks/runs/features", "Pretraining runs and results.json.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the usual search path).")
flags.DEFINE_list("labels", ["10", "100", "1000", "full"], "Labels per class, or 'full'.")
flags.DEFINE_integer("seeds", 3, "Seeds per configuration.")
flags.DEFINE_list("methods", ["random", "probe", "finetune"], "Methods to run.")
flags.DEFINE_list("encoders", ["autoencoder", "vae"], "Encoders for probe and finetune.")
flags.DEFINE_integer("pretrain_epochs", 5, "Epochs of encoder pretraining (resumed if done).")
flags.DEFINE_string("train_split", "train[:50000]", "Pool the labeled subsets are drawn from.")
flags.DEFINE_string("val_split", "train[50000:]", "Evaluation split of the pretraining runs.")
flags.DEFINE_string("pretrain_split", None, "Unlabeled pretraining images (default: train_split).")
flags.DEFINE_string("test_split", "test", "Split the accuracy is measured on.")
flags.DEFINE_float("steps_scale", 1.0, "Multiplies every budget's training steps (smoke runs).")
flags.DEFINE_float("minutes", 60.0, "Start no new run after this many minutes.")
flags.DEFINE_integer("latent_dim", 16, "Code size of both encoders (and of the classifier).")
flags.DEFINE_list(
    "semisupervised_runs", [], "Globs of finished semi-supervised run dirs to add as columns."
)
FLAGS = flags.FLAGS

HIDDEN = 32
# (steps, batch, learning rate) per labels-per-class; None = the full training set.
SCHEDULE = {10: (300, 32), 100: (600, 64), 1000: (1500, 64), None: (940, 128)}
LEARNING_RATE = {"random": 1e-3, "probe": 3e-3, "finetune": 1e-3}
# Column names of the semi-supervised methods (config.model.method of a run).
SEMISUPERVISED = {
    "supervised": "supervised (M2's convnet, augmented)",
    "m2": "M2",
    "m1m2": "M1+M2",
}


def load(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Statically binarized images float32 [N, 28, 28, 1] and labels int32 [N], in split order."""
    data = ImageData(DataConfig(data_dir=data_dir), split, training=False)
    batches = list(data.dataset(1000))
    x = np.concatenate([b["image"].numpy() for b in batches])
    return x, np.concatenate([b["label"].numpy() for b in batches])


def label_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class drawn by seed, in the order a run visits
    them: `data.labeled_subset` (the semi-supervised trainer's draw), permuted; None: all."""
    rng = np.random.default_rng(seed + 2000)
    if per_class is None:
        return rng.permutation(len(labels))
    return rng.permutation(labeled_subset(labels, per_class, seed))


def semisupervised_rows(patterns, labels: np.ndarray, train_split: str, test_split: str):
    """Result rows of finished semi-supervised runs, checked to have the labeled images this
    script draws for their seed. Returns (rows, names of unfinished run dirs)."""
    dirs = sorted({d for p in patterns for d in glob.glob(p) if os.path.isdir(d)})
    if patterns and not dirs:
        raise UsageError(f"--semisupervised_runs={','.join(patterns)} matches no directory")
    rows, unfinished, seen = [], [], {}
    for d in dirs:
        model = runs.read_record(d)["model"]
        with open(os.path.join(d, LABELED_RECORD)) as f:
            record = json.load(f)
        per_class, seed = model["labels_per_class"], model["label_seed"]
        mine = np.sort(labeled_subset(labels, per_class, seed))
        if record["split"] != train_split or record["index"] != mine.tolist():
            raise UsageError(
                f"{d}: its labeled images (split {record['split']!r}, seed {seed}) are not "
                f"the ones this benchmark draws from {train_split!r} for seed {seed}"
            )
        path = os.path.join(d, "metrics.json")
        test = {}
        if os.path.exists(path):
            with open(path) as f:
                test = json.load(f).get("test", {})
        if not test:
            unfinished.append(d)
            continue
        if test["split"] != test_split:
            raise UsageError(f"{d}: measured on {test['split']!r}, not --test_split={test_split!r}")
        key = (model["method"], per_class, seed)
        if key in seen:
            raise UsageError(
                f"{d} and {seen[key]} are both {key[0]} at {per_class}/class, seed {seed}"
            )
        seen[key] = d
        rows.append(
            dict(
                labels=per_class,
                method=model["method"],
                encoder="none",
                seed=seed,
                accuracy=test["accuracy"],
                run=d,
            )
        )
    return rows, unfinished


def pretrain(family: str, out: str) -> str:
    """Trains (or resumes) an encoder on unlabeled images with the shared harness."""
    latent = FLAGS.latent_dim
    config = (
        dataclasses.replace(autoencoder.reproduce(), latent_dim=latent, hidden=HIDDEN)
        if family == "autoencoder"
        else vae.Config(latent_dim=latent, hidden=HIDDEN, eval_k=1, export_k=1)
    )
    model_dir = os.path.join(out, f"pretrain_{family}_{latent}d")
    data = DataConfig(
        data_dir=FLAGS.data_dir,
        train_split=FLAGS.pretrain_split or FLAGS.train_split,
        eval_split=FLAGS.val_split,
    )
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
    try:
        benchmark()
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)


def benchmark():
    start = time.perf_counter()
    os.makedirs(FLAGS.out, exist_ok=True)
    known = ", ".join("full" if k is None else str(k) for k in SCHEDULE)
    check(
        all(b == "full" or (b.isdigit() and int(b) in SCHEDULE) for b in FLAGS.labels),
        f"--labels={','.join(FLAGS.labels)}: each must be one of {known}",
    )
    budgets = [None if b == "full" else int(b) for b in FLAGS.labels]
    train_xy = load(FLAGS.train_split, FLAGS.data_dir)
    merged, unfinished = semisupervised_rows(
        FLAGS.semisupervised_runs, train_xy[1], FLAGS.train_split, FLAGS.test_split
    )  # checked before hours of training, not after
    for d in unfinished:
        print(f"not in the table (no test accuracy yet: unfinished or still running): {d}")
    encoders = FLAGS.encoders if set(FLAGS.methods) - {"random"} else []
    pretrained = {family: pretrain(family, FLAGS.out) for family in encoders}
    sources = {family: runs.restore_model(d)[0] for family, d in pretrained.items()}
    test_xy = load(FLAGS.test_split, FLAGS.data_dir)
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
                        cpu_seconds=cpu,
                    )
                )
                print(
                    f"{label} {method} {encoder} seed {seed}: {acc:.4f} "
                    f"({seconds:.0f} s, {cpu:.0f} CPU s)"
                )
        with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
            json.dump(results + merged, f, indent=1)
    columns = [(f"{m} ({e})" if m != "random" else "random init", m, e) for m, e in configs]
    columns += [
        (name, method, "none")
        for method, name in SEMISUPERVISED.items()
        if any(r["method"] == method for r in merged)
    ]
    print(f"\ntest accuracy (%) over {FLAGS.seeds} seeds, {time.perf_counter() - start:.0f} s:")
    print(table(results + merged, ["full" if b is None else b for b in budgets], columns))


if __name__ == "__main__":
    app.run(main)
