"""VAE benchmark: test NLL (IWAE, k=5000) on statically binarized MNIST, and train speed.

    # quality: train a preset for a CPU budget, then the k=5000 bound on all 10,000 test images
    python -m benchmarks.vae quality --config=reproduce --minutes=30 --out=benchmarks/runs/vae_elbo
    python -m benchmarks.vae quality --config=reproduce --train_k=50 --minutes=30 \\
        --out=benchmarks/runs/vae_iwae
    # speed: train images/s of the default and reproduce presets, XLA on and off
    python -m benchmarks.vae speed
    # pytorch-generative's VAE (its reproduce(): 974,241 weights, MNIST padded to 32x32)
    python -m benchmarks.vae speed --presets=resnet --xla=false --steps=30
    # the same in bf16 and float32, in chunks of 64 with one thread per op, 3 rounds
    python -m benchmarks.vae speed --presets=resnet --xla=false --precision=bfloat16,float32 \
        --micro_batch=64 --intra_op_threads=1 --rounds=3 --steps=30

Each command prints a JSON record and appends it to benchmarks/runs/vae.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from gen_keras import train  # noqa: E402
from gen_keras.config import PRECISIONS, DataConfig, TrainConfig  # noqa: E402
from gen_keras.data import ImageData  # noqa: E402
from gen_keras.layers import in_precision  # noqa: E402
from gen_keras.models import vae  # noqa: E402

PRESETS = {
    "default": vae.Config,
    "reproduce": vae.reproduce,
    "small": vae.small,
    "resnet": lambda: vae.reproduce("resnet"),  # pytorch-generative's VAE
}
LOG = os.path.join("benchmarks", "runs", "vae.jsonl")


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "tensorflow": tf.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def quality(args) -> dict:
    config = dataclasses.replace(PRESETS[args.config](), train_k=args.train_k, eval_k=args.eval_k)
    data = DataConfig(binarization=args.binarization)
    cfg = TrainConfig(
        batch_size=args.batch_size,
        epochs=args.max_epochs,
        learning_rate=args.learning_rate,
        precision=args.precision,
        micro_batch=args.micro_batch,
        intra_op_threads=args.intra_op_threads,
        seed=args.seed,
        model_dir=args.out,
        export=False,
        max_train_minutes=args.minutes,
        log_every_steps=200,
    )
    start = time.perf_counter()
    result = train.fit("vae", config, data, cfg, verbose=2)
    seconds = time.perf_counter() - start
    return {
        "benchmark": "vae.quality",
        "config": args.config,
        "model": dataclasses.asdict(config),
        "data": args.binarization,
        "train_minutes_budget": args.minutes,
        "steps": result.step,
        "epochs": result.step * args.batch_size / 60000,
        "test": result.final_metrics,
        "wall_seconds_incl_eval": seconds,
        "machine": machine(),
        "command": args.command_line,
    }


def speed(args) -> dict:
    """Every preset x XLA x precision variant built and warmed up first, then timed in
    interleaved rounds (one process: the rounds see the same machine)."""
    train.set_intra_op_threads(args.intra_op_threads)  # before the first op
    data = ImageData(DataConfig(), "train", training=True)
    batch = next(iter(data.dataset(args.batch_size)))
    xla = {"both": (False, True), "false": (False,), "true": (True,)}[args.xla]
    variants = []
    for name in args.presets.split(","):
        for jit in xla:
            for precision in args.precision.split(","):
                model = vae.build(PRESETS[name](), data.spec, 1e-3)
                model.build_for_training(batch)
                model.micro_batch = args.micro_batch
                step = tf.function(in_precision(model.train_step, precision), jit_compile=jit)
                for i in range(5):  # trace, compile, warm up
                    step(dict(batch, seed=tf.constant([0, i])))
                row = {
                    "config": name,
                    "xla": jit,
                    "precision": precision,
                    "weights": sum(int(tf.size(v)) for v in model.trainable_variables),
                    "rounds": [],
                }
                variants.append((row, step))
    for _ in range(args.rounds):
        for row, step in variants:
            start = time.perf_counter()
            for i in range(args.steps):
                logs = step(dict(batch, seed=tf.constant([1, i])))
            float(logs["loss"])
            rate = args.steps * args.batch_size / (time.perf_counter() - start)
            row["rounds"].append(round(rate, 1))
    for row, _ in variants:
        row["train_images_per_sec"] = statistics.median(row["rounds"])
    return {
        "benchmark": "vae.speed",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "micro_batch": args.micro_batch,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "rows": [row for row, _ in variants],
        "machine": machine(),
        "command": args.command_line,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--config", choices=sorted(PRESETS), default="reproduce")
    q.add_argument("--train_k", type=int, default=1, help="1: ELBO; >1: IWAE objective")
    q.add_argument("--eval_k", type=int, default=5000)
    q.add_argument("--minutes", type=float, default=30.0, help="training budget")
    q.add_argument("--max_epochs", type=int, default=10_000)
    q.add_argument("--batch_size", type=int, default=100)
    q.add_argument("--learning_rate", type=float, default=1e-3)
    q.add_argument("--binarization", default="binary_static")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.add_argument("--precision", choices=PRECISIONS, default="float32")
    q.add_argument("--micro_batch", type=int, default=0, help="TrainConfig.micro_batch")
    q.add_argument("--intra_op_threads", type=int, default=0, help="TrainConfig's; 0: default")
    s = sub.add_parser("speed")
    s.add_argument("--batch_size", type=int, default=128)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument(
        "--presets", default="default,reproduce", help="comma-separated, of: " + ", ".join(PRESETS)
    )
    s.add_argument("--xla", choices=("both", "false", "true"), default="both")
    s.add_argument("--precision", default="float32", help="comma-separated, of: float32, bfloat16")
    s.add_argument("--micro_batch", type=int, default=0, help="TrainConfig.micro_batch")
    s.add_argument("--intra_op_threads", type=int, default=0, help="TrainConfig's; 0: default")
    s.add_argument("--rounds", type=int, default=1, help="timed rounds, variants interleaved")
    args = parser.parse_args()
    args.command_line = "python -m benchmarks.vae " + " ".join(os.sys.argv[1:])
    if args.what == "speed" and not set(args.presets.split(",")) <= set(PRESETS):
        parser.error(f"--presets={args.presets}: each must be one of {', '.join(PRESETS)}")
    if args.what == "speed" and not set(args.precision.split(",")) <= set(PRECISIONS):
        parser.error(f"--precision={args.precision}: each must be one of {', '.join(PRECISIONS)}")
    record = quality(args) if args.what == "quality" else speed(args)
    print(json.dumps(record, indent=2))
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    with open(LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
