"""PixelRNN benchmarks: quality in a time budget, training and sampling throughput.

    # test NLL after --minutes of training (static binarized MNIST)
    python -m benchmarks.pixelrnn --mode=quality --arch=row_lstm --config=reproduce --minutes=60
    # train images/s with XLA on and off
    python -m benchmarks.pixelrnn --mode=train_speed --arch=diagonal_bilstm --config=reproduce
    # the step in chunks of 16 images with one thread per op (TrainConfig.micro_batch,
    # intra_op_threads), graph mode only
    python -m benchmarks.pixelrnn --mode=train_speed --arch=row_lstm --micro_batch=16 \
        --intra_op_threads=1 --train_xla=false
    # sampling images/s: cached sampler vs whole-network recomputation per pixel
    python -m benchmarks.pixelrnn --mode=sample_speed --arch=row_lstm --sample_batches=16,100

Every result is printed as one JSON line (and appended to --out if given). Quality runs
also write a 16-image sample grid to --out_dir.
"""

from __future__ import annotations

import json
import os
import time

import tensorflow as tf
from absl import flags

from gen_keras import evaluation, png, rng, sampling, train
from gen_keras.config import DataConfig
from gen_keras.data import ImageData
from gen_keras.models import pixelrnn
from trainers import common

flags.DEFINE_enum("mode", "quality", ["quality", "train_speed", "sample_speed"], "What to run.")
flags.DEFINE_enum("arch", "row_lstm", list(pixelrnn.ARCHS), "Recurrent layer.")
flags.DEFINE_enum("config", "reproduce", ["default", "small", "reproduce"], "Model preset.")
flags.DEFINE_integer("layers", None, "Override the preset's recurrent layers.")
flags.DEFINE_integer("hidden", None, "Override the preset's h.")
flags.DEFINE_integer("batch_size", 32, "Training batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_float("minutes", 60.0, "quality: training-time budget (compile, evals excluded).")
flags.DEFINE_float("eval_every_minutes", 15.0, "quality: NLL on 1000 test images this often.")
flags.DEFINE_bool("xla", False, "quality: compile the train step with XLA.")
flags.DEFINE_integer("steps", 20, "train_speed: timed steps (after 3 warm-up steps).")
flags.DEFINE_integer(
    "micro_batch",
    0,
    "train_speed: the training step takes its batch in chunks of this many images "
    "(TrainConfig.micro_batch; 0: whole); it must divide --batch_size.",
)
flags.DEFINE_integer(
    "intra_op_threads", 0, "Threads one op may use (TrainConfig.intra_op_threads; 0: default)."
)
flags.DEFINE_bool("train_xla", True, "train_speed: also time the step compiled with XLA.")
flags.DEFINE_string("sample_batches", "16", "sample_speed: comma-separated batch sizes.")
flags.DEFINE_bool("reference", True, "sample_speed: also time the reference sampler.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("out", None, "Append the JSON results to this file.")
flags.DEFINE_string("out_dir", "runs/bench_pixelrnn", "quality: where the sample grid goes.")
FLAGS = flags.FLAGS
PRESETS = {"default": pixelrnn.default, "small": pixelrnn.small, "reproduce": pixelrnn.reproduce}


def _config() -> pixelrnn.Config:
    overrides = {"layers": FLAGS.layers, "hidden": FLAGS.hidden}
    fields = {
        **vars(PRESETS[FLAGS.config](FLAGS.arch)),
        **{k: v for k, v in overrides.items() if v},
    }
    return pixelrnn.Config(**fields)


def _report(result: dict) -> None:
    result = {"benchmark": "pixelrnn", **result, "cpus": os.cpu_count()}
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.write(line + "\n")


def _model(spec):
    model = pixelrnn.build(_config(), spec, FLAGS.learning_rate)
    dummy = {"image": tf.zeros([2, *spec.shape]), "label": tf.zeros([2], tf.int32)}
    model.build_for_training(dummy)
    return model


def _data(split: str, training: bool) -> ImageData:
    return ImageData(DataConfig(binarization="binary_static"), split, training=training)


def _nll(model, data: ImageData, limit: int | None = None) -> float:
    fn = tf.function(lambda x: -model.log_prob(x))
    total, count = 0.0, 0
    for batch in data.dataset(250):
        total += float(tf.reduce_sum(fn(batch["image"])))
        count += int(batch["image"].shape[0])
        if limit and count >= limit:
            break
    return total / count


def quality() -> None:
    """Trains for --minutes of training time (compilation and evaluations excluded), then
    the exact NLL on the whole test split."""
    train_data, test_data = _data("train", True), _data("test", False)
    model = _model(train_data.spec)
    step = tf.function(model.train_step, jit_compile=FLAGS.xla)
    steps_per_epoch = train_data.steps_per_epoch(FLAGS.batch_size)
    base_seed = tf.constant([FLAGS.seed, 1])
    budget, eval_every = FLAGS.minutes * 60.0, FLAGS.eval_every_minutes * 60.0
    wall_start = time.perf_counter()
    steps, epoch, train_seconds, next_eval, curve = 0, 0, 0.0, eval_every, []
    while train_seconds < budget:
        for m in model.metrics:
            m.reset_state()
        batches = iter(train_data.dataset(FLAGS.batch_size, seed=FLAGS.seed, epoch=epoch))
        for _ in range(steps_per_epoch):
            t0 = time.perf_counter()
            logs = step(dict(next(batches), seed=rng.fold_in(base_seed, steps)))
            loss = float(logs["loss"])
            if steps > 0:  # the first step traces and compiles
                train_seconds += time.perf_counter() - t0
            steps += 1
            if steps % 100 == 0:
                print(
                    f"step {steps} epoch {epoch} {train_seconds / 60:.1f} min train nll {loss:.2f}",
                    flush=True,
                )
            if train_seconds >= next_eval:
                nll = round(_nll(model, test_data, 1000), 2)
                curve.append((round(train_seconds / 60, 1), steps, nll))
                print(f"  (minutes, steps, test nll on 1000 images): {curve[-1]}", flush=True)
                next_eval += eval_every
            if train_seconds >= budget:
                break
        epoch += 1
    final = evaluation.score_split(model, test_data)
    seeds = rng.row_seeds(tf.constant([FLAGS.seed, 9]), 16)
    samples = tf.function(lambda s: model.sample(s))(seeds)
    png.write(os.path.join(FLAGS.out_dir, f"samples_{FLAGS.arch}.png"), png.grid(samples.numpy()))
    _report(
        {
            "mode": "quality",
            "arch": FLAGS.arch,
            "config": vars(_config()),
            "train_minutes": round(train_seconds / 60, 1),
            "wall_minutes": round((time.perf_counter() - wall_start) / 60, 1),
            "steps": steps,
            "epochs": round(steps / steps_per_epoch, 2),
            "batch_size": FLAGS.batch_size,
            "learning_rate": FLAGS.learning_rate,
            "xla": FLAGS.xla,
            "test_nll_nats": round(final["nll_nats"], 2),
            "test_bits_per_dim": round(final["nll_bits_per_dim"], 4),
            "curve": curve,
        }
    )


def train_speed() -> None:
    """Steady-state training images/s of the train step without XLA (and with, unless
    --train_xla=false), in --micro_batch chunks if given."""
    train.check_micro_batch(FLAGS.micro_batch, FLAGS.batch_size)
    data = _data("train[:2048]", True)
    batches = list(data.dataset(FLAGS.batch_size, steps=4))
    for xla in (False, True) if FLAGS.train_xla else (False,):
        model = _model(data.spec)
        model.micro_batch = FLAGS.micro_batch
        step = tf.function(model.train_step, jit_compile=xla)
        t0 = time.perf_counter()
        for k in range(3):
            float(step(dict(batches[k % 4], seed=tf.constant([k, 0])))["loss"])
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k in range(FLAGS.steps):
            logs = step(dict(batches[k % 4], seed=tf.constant([k, 1])))
        float(logs["loss"])
        seconds = time.perf_counter() - t0
        _report(
            {
                "mode": "train_speed",
                "arch": FLAGS.arch,
                "config": vars(_config()),
                "xla": xla,
                "batch_size": FLAGS.batch_size,
                "micro_batch": FLAGS.micro_batch,
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                "images_per_sec": round(FLAGS.steps * FLAGS.batch_size / seconds, 2),
                "compile_and_warmup_s": round(warmup, 1),
            }
        )


def sample_speed() -> None:
    """Images/s of the cached sampler (and the reference) on an untrained model."""
    spec = _data("test[:8]", False).spec
    model = _model(spec)
    cached = tf.function(lambda s: model.sample(s, cached=True))
    reference = tf.function(lambda s: sampling.sample(model.params, model.head, spec, s))
    for n in [int(b) for b in FLAGS.sample_batches.split(",")]:
        seeds = rng.row_seeds(tf.constant([FLAGS.seed, 5]), n)
        result = {"mode": "sample_speed", "arch": FLAGS.arch, "config": vars(_config()), "batch": n}
        samplers = [("cached", cached)] + ([("reference", reference)] if FLAGS.reference else [])
        outputs = {}
        for name, fn in samplers:
            t0 = time.perf_counter()
            fn.get_concrete_function(seeds)
            trace = time.perf_counter() - t0
            t0 = time.perf_counter()
            outputs[name] = fn(seeds).numpy()
            seconds = time.perf_counter() - t0
            result[f"{name}_images_per_sec"] = round(n / seconds, 3)
            result[f"{name}_seconds"] = round(seconds, 2)
            result[f"{name}_trace_s"] = round(trace, 1)
        if "reference" in outputs:
            result["speedup"] = round(result["reference_seconds"] / result["cached_seconds"], 1)
            result["same_samples"] = bool((outputs["cached"] == outputs["reference"]).all())
        _report(result)


def main(argv):
    del argv
    train.set_intra_op_threads(FLAGS.intra_op_threads)  # before the first op
    {"quality": quality, "train_speed": train_speed, "sample_speed": sample_speed}[FLAGS.mode]()


if __name__ == "__main__":
    common.run(main)
