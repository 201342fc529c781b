"""PixelCNN speed and quality: `python -m benchmarks.pixelcnn --task=speed|quality`.

speed (random weights and data; speed does not depend on them):
  train images/s with XLA off and on; sampling images/s for each --batch_sizes with the
  reference sampler (the whole network per pixel) and the cached sampler, in graph mode
  and with XLA; and whether the two samplers drew the same images. The reference costs
  the same for every row, so --reference_rows=N times only its first N rows (on the
  full-size network) and extrapolates; 0 runs it to the end.
quality (static binarized MNIST unless --binarization says otherwise):
  trains --arch/--config for about --minutes on this machine with the shared harness,
  then reports the exact test NLL (nats per image, bits/dim) over the whole test split.

`--config=reproduce` is pytorch-generative's network for --arch (see
`pixelcnn.reproduce`); its training step is timed against the peer's side by side with
  python -m benchmarks.pixelcnn --task=speed --arch=pixelcnn --config=reproduce \\
      --train_batches=256,64 --xla=false --sampling=false
and `--config=keras_io --arch=pixelcnn` is keras-io's example network (`pixelcnn.keras_io`).

Examples (the exact commands behind benchmarks/results.md (PixelCNN)):
  python -m benchmarks.pixelcnn --task=speed --arch=gated
  python -m benchmarks.pixelcnn --task=speed --arch=pixelcnn --reference_rows=4
  python -m benchmarks.pixelcnn --task=quality --arch=gated --minutes=60
  python -m benchmarks.pixelcnn --task=quality --arch=pixelcnn --config=reproduce --minutes=60
  python -m benchmarks.pixelcnn --task=quality --binarization=uint8 \\
      --likelihood=logistic_mixture --minutes=60
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf
from absl import flags

from gen_keras import sampling, train
from gen_keras.config import PRECISIONS, DataConfig, TrainConfig, check
from gen_keras.data import DataSpec
from gen_keras.layers import MaskedConv2D, in_precision
from gen_keras.models import pixelcnn
from trainers import common

flags.DEFINE_enum("task", "speed", ["speed", "quality"], "What to measure.")
flags.DEFINE_enum("arch", "gated", list(pixelcnn.ARCHS), "Architecture.")
flags.DEFINE_enum(
    "config",
    "default",
    ["default", "small", "reproduce", "keras_io"],
    "Model preset (keras_io: keras-io's example network, arch pixelcnn).",
)
flags.DEFINE_enum("likelihood", "auto", list(pixelcnn.LIKELIHOODS), "Pixel likelihood.")
flags.DEFINE_string("binarization", "binary_static", "Data mode (binary_static or uint8).")
flags.DEFINE_list("batch_sizes", ["16", "100"], "speed: sampling batch sizes.")
flags.DEFINE_integer("reference_rows", 0, "speed: rows of the reference to time (0: all).")
flags.DEFINE_list("train_batches", ["64"], "speed: training batch sizes.")
flags.DEFINE_integer("train_steps", 10, "speed: timed training steps per XLA setting.")
flags.DEFINE_bool("xla", True, "speed: also time everything with XLA.")
flags.DEFINE_enum(
    "precision",
    "float32",
    list(PRECISIONS),
    "speed: the training step's masked convolutions (TrainConfig.precision).",
)
flags.DEFINE_integer(
    "micro_batch",
    0,
    "speed: the training step takes its batch in chunks of this many images "
    "(TrainConfig.micro_batch; 0: whole); it must divide every --train_batches.",
)
flags.DEFINE_integer(
    "intra_op_threads", 0, "Threads one op may use (TrainConfig.intra_op_threads; 0: default)."
)
flags.DEFINE_bool("sampling", True, "speed: also time the samplers.")
flags.DEFINE_bool(
    "peak",
    False,
    "speed: also time a float32 2048x2048 matmul (the machine's peak) and report each "
    "training rate's share of it.",
)
flags.DEFINE_float("minutes", 60.0, "quality: training budget in minutes.")
flags.DEFINE_integer("batch_size", 64, "quality: training batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "quality: Adam learning rate.")
flags.DEFINE_string("model_dir", None, "quality: run directory (default: a new one in /tmp).")
flags.DEFINE_string("out", None, "Append the JSON result as one line to this file.")
FLAGS = flags.FLAGS


def _config() -> pixelcnn.Config:
    if FLAGS.config == "reproduce":
        base = pixelcnn.reproduce(FLAGS.arch)
    elif FLAGS.config == "keras_io":
        check(
            FLAGS.arch == "pixelcnn", "--config=keras_io is a plain PixelCNN: give --arch=pixelcnn"
        )
        base = pixelcnn.keras_io()
    else:
        base = {"default": pixelcnn.Config, "small": pixelcnn.small}[FLAGS.config]()
    return dataclasses.replace(base, arch=FLAGS.arch, likelihood=FLAGS.likelihood)


def _images(spec, n, seed=0):
    u = tf.random.stateless_uniform([n, *spec.shape], [seed, 7])
    return tf.cast(u < 0.15, tf.float32) if spec.binary else tf.floor(u * 256.0)


def _seeds(n):
    return tf.constant(np.stack([np.arange(n), np.full(n, 11)], axis=1), tf.int32)


def _timed(fn, *args, repeats=1):
    """(seconds per call after one warm-up call, last output)."""
    out = fn(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    return (time.perf_counter() - start) / repeats, out


def train_flops_per_image(model, spec) -> dict:
    """FLOPs of one training step per image, from every masked conv of the network: as
    executed (the stored kernels, masked zeros included) and useful (the taps the masks
    keep); a multiply-add is 2 FLOPs, and a step is the forward pass plus twice it backward
    (gradients of inputs and of weights; an upper bound, the image needs none)."""
    h, w = spec.shape[:2]
    stored = useful = 0
    for layer in model._flatten_layers():
        if isinstance(layer, MaskedConv2D):
            taps = layer.kernel_rows * layer.kernel_cols * layer.input_channels * layer.filters
            kept = taps if layer._mask is None else int(layer._mask.sum())
            stored, useful = stored + taps, useful + kept
    return {"stored": 3 * 2 * h * w * stored, "useful": 3 * 2 * h * w * useful}


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, dtype=tf.float32) -> float:
    """GFLOP/s of an n x n matmul in `dtype` on this machine (best of `repeats`): the better
    of one matmul and of its row blocks as one independent matmul per core, which is how the
    cores reach their peak when an op may use only one thread (--intra_op_threads=1)."""
    a = tf.cast(tf.random.stateless_normal([n, n], [1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], [3, 4]), dtype)
    cores = os.cpu_count() or 1
    rows = [n // cores + (i < n % cores) for i in range(cores)]
    whole = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    blocks = tf.function(
        lambda: tf.add_n([tf.reduce_sum(tf.matmul(part, b)) for part in tf.split(a, rows)])
    )
    best = float("inf")
    for matmul in (whole, blocks):
        matmul()
        for _ in range(repeats):
            start = time.perf_counter()
            matmul().numpy()
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def speed() -> dict:
    spec = DataSpec((28, 28, 1), FLAGS.binarization, 10)
    model = pixelcnn.build(_config(), spec, 1e-3)
    model.build_for_training({"image": _images(spec, 2), "label": tf.zeros([2], tf.int32)})
    flops = train_flops_per_image(model, spec)
    result = {"params": model.count_params(), "train": {}, "sample": {}, "train_flops": flops}
    if FLAGS.peak:
        result["matmul_peak_gflops"] = matmul_peak_gflops()
        print(f"float32 matmul peak: {result['matmul_peak_gflops']:.1f} GFLOP/s")
        if FLAGS.precision != "float32":
            low = result["matmul_peak_gflops_" + FLAGS.precision] = matmul_peak_gflops(
                dtype=tf.as_dtype(FLAGS.precision)
            )
            print(f"{FLAGS.precision} matmul peak: {low:.1f} GFLOP/s")
    chunk = model.micro_batch = FLAGS.micro_batch
    for n in (int(b) for b in FLAGS.train_batches):
        train.check_micro_batch(chunk, n)
        batch = {"image": _images(spec, n), "label": tf.zeros([n], tf.int32)}
        for jit in (False, True) if FLAGS.xla else (False,):
            mode = ("xla" if jit else "graph") + (
                "" if FLAGS.precision == "float32" else "_" + FLAGS.precision
            )
            if chunk and chunk < n:
                mode += f"_micro{chunk}"
            train_step = in_precision(model.train_step, FLAGS.precision)
            step = tf.function(train_step, jit_compile=jit)
            data = dict(batch, seed=tf.constant([0, 0]))
            step(data)
            seconds, _ = _timed(step, data, repeats=FLAGS.train_steps)
            result["train"][f"{mode}_batch_{n}"] = n / seconds
            share = ""
            if FLAGS.peak:
                gflops = n / seconds * flops["stored"] / 1e9
                result["train"][f"{mode}_batch_{n}_peak_share"] = (
                    gflops / result["matmul_peak_gflops"]
                )
                share = (
                    f", {gflops:.1f} GFLOP/s = {gflops / result['matmul_peak_gflops']:.0%} of peak"
                )
                low = result.get("matmul_peak_gflops_" + FLAGS.precision)
                if low:
                    result["train"][f"{mode}_batch_{n}_{FLAGS.precision}_peak_share"] = gflops / low
                    share += f" ({gflops / low:.0%} of the {FLAGS.precision} peak)"
            print(f"train {mode} batch {n}: {n / seconds:.1f} images/s{share}")
    if not FLAGS.sampling:
        return result

    height = spec.shape[0]
    rows = FLAGS.reference_rows or height
    check(0 < rows <= height, f"reference_rows={rows} must be in 1..{height} (0: all)")
    part = DataSpec((rows, *spec.shape[1:]), spec.mode, spec.num_classes)

    def full_size(x, label):  # the whole network on a full-size image, rows >= `rows` empty
        padded = tf.pad(x, [[0, 0], [0, height - rows], [0, 0], [0, 0]])
        return model(padded, label)[:, :rows]

    for n in (int(b) for b in FLAGS.batch_sizes):
        seeds = _seeds(n)
        for jit in (False, True) if FLAGS.xla else (False,):
            mode = "xla" if jit else "graph"
            cached = tf.function(lambda s: model.sample(s), jit_compile=jit)
            reference = tf.function(
                lambda s: sampling.sample(full_size, model.head, part, s), jit_compile=jit
            )
            t_cached, x_cached = _timed(cached, seeds)
            t_ref, x_ref = _timed(reference, seeds)
            t_ref *= height / rows
            same = bool(np.array_equal(x_cached.numpy()[:, :rows], x_ref.numpy()))
            entry = {
                "cached_images_per_s": n / t_cached,
                "reference_images_per_s": n / t_ref,
                "speedup": t_ref / t_cached,
                "reference_rows_timed": rows,
                "equal_samples_on_timed_rows": same,
            }
            result["sample"][f"{mode}_batch_{n}"] = entry
            print(
                f"sample {mode} batch {n}: cached {n / t_cached:.2f} images/s, reference "
                f"{n / t_ref:.4f} images/s{'' if rows == height else f' ({rows} rows timed)'}"
                f", speedup {t_ref / t_cached:.0f}x, equal samples: {same}"
            )
    return result


def quality() -> dict:
    config = _config()
    data = DataConfig(binarization=FLAGS.binarization)
    # Probe the step time on the real model, then fit the budget in epochs of <= 1 pass.
    spec = DataSpec((28, 28, 1), FLAGS.binarization, 10)
    model = pixelcnn.build(config, spec, FLAGS.learning_rate)
    batch = {
        "image": _images(spec, FLAGS.batch_size),
        "label": tf.zeros([FLAGS.batch_size], tf.int32),
    }
    model.build_for_training(batch)
    step = tf.function(model.train_step)
    seconds, _ = _timed(step, dict(batch, seed=tf.constant([0, 0])), repeats=5)
    budget_steps = max(1, int(FLAGS.minutes * 60 / seconds * 0.85))  # evals, pictures
    per_epoch = 60_000 // FLAGS.batch_size
    epochs = max(1, -(-budget_steps // per_epoch))
    model_dir = FLAGS.model_dir or f"/tmp/pixelcnn_quality_{FLAGS.arch}_{int(time.time())}"
    train_config = TrainConfig(
        batch_size=FLAGS.batch_size,
        epochs=epochs,
        steps_per_epoch=-(-budget_steps // epochs),
        eval_steps=20,
        learning_rate=FLAGS.learning_rate,
        model_dir=model_dir,
        export=False,
        jit_compile="off",
    )
    start = time.perf_counter()
    run = train.fit("pixelcnn", config, data, train_config, verbose=common.verbosity())
    wall = time.perf_counter() - start
    result = {
        "config": dataclasses.asdict(config),
        "binarization": FLAGS.binarization,
        "steps": run.step,
        "epochs_of_data": run.step * FLAGS.batch_size / 60_000,
        "wall_minutes": wall / 60,
        **run.final_metrics,
        "model_dir": model_dir,
    }
    print(
        f"{FLAGS.arch}: {run.step} steps ({result['epochs_of_data']:.2f} epochs) in "
        f"{wall / 60:.1f} min: test NLL {run.final_metrics['nll_nats']:.2f} nats = "
        f"{run.final_metrics['nll_bits_per_dim']:.4f} bits/dim"
    )
    return result


def main(argv):
    del argv
    train.set_intra_op_threads(FLAGS.intra_op_threads)  # before the first op
    result = speed() if FLAGS.task == "speed" else quality()
    result.update(
        task=FLAGS.task,
        arch=FLAGS.arch,
        preset=FLAGS.config,
        machine=f"{platform.machine()} {os.cpu_count()} CPUs, TF {tf.__version__}",
        command="python -m benchmarks.pixelcnn " + " ".join(sys.argv[1:]),
    )
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.write(json.dumps(result, default=float) + "\n")


if __name__ == "__main__":
    common.run(main)
