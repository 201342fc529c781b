"""GAN sample quality and speed per loss after a wall-clock training budget on this machine.

    python -m benchmarks.gan --classifier=saved_models/classifier --minutes=30
    python -m benchmarks.gan --classifier=saved_models/classifier --config=reproduce \
        --losses=non_saturating --epochs=25

For each loss: train with the shared harness (one harness epoch = --steps_per_epoch steps,
FID on 1000 samples after each in TensorBoard) until --minutes of wall clock are spent
(measured throughput decides the number of epochs after the first), or for --epochs; then
score --samples samples (drawn through the export's `sample` signature, row i with seed
[--seed, i]) against the second half of the MNIST test split under the
classifier's features (benchmarks.compare's protocol), beside the floor: the first half of
the test split against the second. Also reports training images/s (the harness's per-epoch
figure, median) and sampling images/s. Each model is exported to <out>/exports/gan_<loss>
so benchmarks.compare can rank it with other families. Results go to <out>/results.json
and a markdown table on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time

import tensorflow as tf
from absl import app, flags, logging
from tensorboard.backend.event_processing import event_accumulator as ea

from benchmarks.compare import Reference
from gen_keras import export, runs, train
from gen_keras.config import DataConfig, TrainConfig, UsageError, check, replace
from gen_keras.models import gan

flags.DEFINE_string("classifier", "", "Classifier export or run dir (the feature network).")
flags.DEFINE_list("losses", list(gan.LOSSES), "Losses to train, one model each.")
flags.DEFINE_enum("config", "default", ["default", "small", "reproduce"], "GAN preset.")
flags.DEFINE_bool("conditional", False, "Train conditional GANs (class-balanced samples).")
flags.DEFINE_float("minutes", 30.0, "Wall-clock training budget per loss (with --epochs=0).")
flags.DEFINE_integer("epochs", 0, "Train this many harness epochs instead of a time budget.")
flags.DEFINE_integer("steps_per_epoch", 300, "Steps per harness epoch (a FID point each).")
flags.DEFINE_integer("batch_size", 64, "Batch per discriminator update (x n_critic per step).")
flags.DEFINE_float("learning_rate", 2e-4, "Adam learning rate of both players.")
flags.DEFINE_integer("samples", 5000, "Samples scored per model (and rows per test half).")
flags.DEFINE_integer("seed", 0, "Training and sampling seed.")
flags.DEFINE_string("out", "runs/bench_gan", "Runs, exports and results.json go here.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the usual search path).")
FLAGS = flags.FLAGS


def _images_per_sec(model_dir: str) -> float:
    acc = ea.EventAccumulator(os.path.join(model_dir, "train"), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    values = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("images_per_sec")]
    return statistics.median(values[1:] or values)  # the first epoch includes tracing


def train_one(loss: str, preset, data_config: DataConfig, out: str):
    """Trains one loss to its budget; returns (RunResult, wall seconds, epochs)."""
    config = dataclasses.replace(
        preset, loss=loss, conditional=FLAGS.conditional, classifier=FLAGS.classifier
    )
    config = dataclasses.replace(config, final_samples=min(config.final_samples, 1000))
    cfg = TrainConfig(
        batch_size=FLAGS.batch_size * config.critic_steps,
        epochs=1,
        steps_per_epoch=FLAGS.steps_per_epoch,
        eval_steps=10,
        learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed,
        model_dir=os.path.join(out, "runs", f"gan_{loss}"),
        export=False,
        log_every_steps=50,
    )
    start = time.perf_counter()
    if FLAGS.epochs:
        result = train.fit("gan", config, data_config, replace(cfg, epochs=FLAGS.epochs), verbose=2)
        return result, time.perf_counter() - start, FLAGS.epochs
    # Budget: train, time the call, resume for as many more epochs as the rest allows.
    epochs, done, result = 1, 0, None
    while True:
        call = time.perf_counter()
        result = train.fit("gan", config, data_config, replace(cfg, epochs=epochs), verbose=2)
        per_epoch = (time.perf_counter() - call) / (epochs - done)  # with this call's overhead
        left = 60 * FLAGS.minutes - (time.perf_counter() - start)
        more = math.floor(left / per_epoch)
        if more < 1:
            break
        done, epochs = epochs, epochs + more
    return result, time.perf_counter() - start, epochs


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        check(bool(FLAGS.classifier), "--classifier is needed (python -m trainers.classifier)")
        for loss in FLAGS.losses:
            check(loss in gan.LOSSES, f"losses: {loss!r} is not one of {', '.join(gan.LOSSES)}")
        reference = Reference(runs.load_classifier(FLAGS.classifier), FLAGS.samples, FLAGS.data_dir)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    preset = {"default": gan.Config, "small": gan.small, "reproduce": gan.reproduce}[FLAGS.config]()
    data_config = DataConfig(binarization="float_symmetric", data_dir=FLAGS.data_dir)
    floor = reference.floor("8bit")
    rows = []
    for loss in FLAGS.losses:
        result, seconds, epochs = train_one(loss, preset, data_config, FLAGS.out)
        path = export.export(result.model, os.path.join(FLAGS.out, "exports"), f"gan_{loss}")
        start = time.perf_counter()  # through the export, as benchmarks.compare samples
        samples = runs.sample_from_export(path, FLAGS.samples, seed=FLAGS.seed)
        sampling = FLAGS.samples / (time.perf_counter() - start)
        row = {
            "loss": loss,
            "config": FLAGS.config,
            "conditional": FLAGS.conditional,
            "steps": result.step,
            "epochs": epochs,
            "train_minutes": seconds / 60,
            "train_images_per_sec": _images_per_sec(result.model_dir),
            "sample_images_per_sec": sampling,
            **reference.score(samples, FLAGS.seed),
            "export": path,
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if "fraction_" not in k}, default=float))
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
        json.dump(
            {"features": reference.classifier.name, "floor": floor, "rows": rows},
            f,
            indent=2,
            default=float,
        )
    print(f"\nfeatures: {reference.classifier.name}")
    print(
        f"floor (test[:{FLAGS.samples}] vs test[{FLAGS.samples}:{2 * FLAGS.samples}]): "
        f"FID {floor['fid']:.3f}, KID {floor['kid']:.4g} +- {floor['kid_stderr']:.2g}, "
        f"classifier score {floor['classifier_score']:.2f}"
    )
    print(
        "| loss | steps | minutes | train img/s | sample img/s | FID | FID / floor "
        "| KID +- se | classifier score | min class % | class entropy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['loss']} | {r['steps']} | {r['train_minutes']:.1f} "
            f"| {r['train_images_per_sec']:.0f} | {r['sample_images_per_sec']:.0f} "
            f"| {r['fid']:.3f} | {r['fid'] / floor['fid']:.1f} "
            f"| {r['kid']:.4g} +- {r['kid_stderr']:.2g} "
            f"| {r['classifier_score']:.2f} | {100 * r['class_min_fraction']:.1f} "
            f"| {r['class_entropy']:.3f} |"
        )


if __name__ == "__main__":
    app.run(main)
