"""VAE benchmark: test NLL (IWAE, k=5000) on statically binarized MNIST, and train speed.

    # quality: train a preset for a CPU budget, then the k=5000 bound on all 10,000 test images
    python -m benchmarks.vae quality --config=reproduce --minutes=30 --out=benchmarks/runs/vae_elbo
    python -m benchmarks.vae quality --config=reproduce --train_k=50 --minutes=30 \\
        --out=benchmarks/runs/vae_iwae
    # speed: train images/s of the default and reproduce presets, XLA on and off
    python -m benchmarks.vae speed
    # pytorch-generative's VAE (its reproduce(): 974,241 weights, MNIST padded to 32x32)
    python -m benchmarks.vae speed --presets=resnet --xla=false --steps=30

Each command prints a JSON record and appends it to benchmarks/runs/vae.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from gen_keras import train  # noqa: E402
from gen_keras.config import DataConfig, TrainConfig  # noqa: E402
from gen_keras.data import ImageData  # noqa: E402
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
    data = ImageData(DataConfig(), "train", training=True)
    batch = next(iter(data.dataset(args.batch_size)))
    rows = []
    xla = {"both": (False, True), "false": (False,), "true": (True,)}[args.xla]
    for name in args.presets.split(","):
        for jit in xla:
            model = vae.build(PRESETS[name](), data.spec, 1e-3)
            model.build_for_training(batch)
            step = tf.function(model.train_step, jit_compile=jit)
            for i in range(5):  # trace, compile, warm up
                step(dict(batch, seed=tf.constant([0, i])))
            start = time.perf_counter()
            for i in range(args.steps):
                logs = step(dict(batch, seed=tf.constant([1, i])))
            float(logs["loss"])
            rate = args.steps * args.batch_size / (time.perf_counter() - start)
            weights = sum(int(tf.size(v)) for v in model.trainable_variables)
            rows.append(
                {
                    "config": name,
                    "xla": jit,
                    "weights": weights,
                    "train_images_per_sec": round(rate, 1),
                }
            )
    return {
        "benchmark": "vae.speed",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rows": rows,
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
    s = sub.add_parser("speed")
    s.add_argument("--batch_size", type=int, default=128)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument(
        "--presets", default="default,reproduce", help="comma-separated, of: " + ", ".join(PRESETS)
    )
    s.add_argument("--xla", choices=("both", "false", "true"), default="both")
    args = parser.parse_args()
    args.command_line = "python -m benchmarks.vae " + " ".join(os.sys.argv[1:])
    if args.what == "speed" and not set(args.presets.split(",")) <= set(PRESETS):
        parser.error(f"--presets={args.presets}: each must be one of {', '.join(PRESETS)}")
    record = quality(args) if args.what == "quality" else speed(args)
    print(json.dumps(record, indent=2))
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    with open(LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
