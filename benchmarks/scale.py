"""Scale-out overheads on one machine: 1 vs 2 training workers, 1 vs 2 Beam workers.

    python -m benchmarks.scale workers --steps=150      # VAE, same global batch
    python -m benchmarks.scale beam --export=saved_models/vae/1 --examples=10000

On a 2-core machine two workers cannot be faster than one: the figures show what the
collective all-reduce (gRPC on loopback) and Beam's process pool cost.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OUT = os.path.join("benchmarks", "runs", "scale.jsonl")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _images_per_sec(model_dir: str) -> float:
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(os.path.join(model_dir, "train"), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return float(tf.make_ndarray(acc.Tensors("images_per_sec")[-1].tensor_proto))


def workers(args) -> dict:
    common = [
        "-m",
        "trainers.vae",
        f"--batch_size={args.batch_size}",
        "--epochs=1",
        f"--steps_per_epoch={args.steps}",
        "--eval_steps=1",
        "--noexport",
    ]
    rows = []
    for n in (1, 2):
        model_dir = tempfile.mkdtemp(prefix=f"scale-{n}-")
        procs = []
        ports = _free_ports(n)
        for i in range(n):
            env = dict(os.environ)
            flags = [f"--model_dir={model_dir}"]
            if n > 1:
                env["TF_CONFIG"] = json.dumps(
                    {
                        "cluster": {"worker": [f"localhost:{p}" for p in ports]},
                        "task": {"type": "worker", "index": i},
                    }
                )
                flags.append("--strategy=multi_worker")
            procs.append(
                subprocess.Popen(
                    [sys.executable, *common, *flags],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for p in procs:
            _, err = p.communicate(timeout=3600)
            if p.returncode:
                raise RuntimeError(err[-2000:])
        rows.append(
            {
                "workers": n,
                "global_batch": args.batch_size,
                "train_images_per_sec": round(_images_per_sec(model_dir), 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"benchmark": "scale.workers", "model": "vae default", "steps": args.steps, "rows": rows}


def beam_scoring(args) -> dict:
    import apache_beam as beam
    import tensorflow_datasets as tfds
    from apache_beam.options.pipeline_options import PipelineOptions

    from gen_keras import beam_inference
    from gen_keras.data import candidate_data_dirs

    builder = next(
        b
        for b in (tfds.builder("mnist", data_dir=d) for d in candidate_data_dirs(None))
        if b.is_prepared()
    )
    rows = []
    for n in (1, 2):
        options = PipelineOptions(
            [f"--direct_num_workers={n}", "--direct_running_mode=multi_processing"]
        )
        out = tempfile.mkdtemp(prefix=f"beam-{n}-")
        start = time.perf_counter()
        with beam.Pipeline(options=options) as p:
            images = beam_inference.read_tfds(p, builder, f"test[:{args.examples}]")
            beam_inference.score(images, args.export, out, mode=args.binarization)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "direct_workers": n,
                "images": args.examples,
                "seconds": round(seconds, 1),
                "images_per_sec": round(args.examples / seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"benchmark": "scale.beam", "export": args.export, "rows": rows}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("workers")
    w.add_argument("--steps", type=int, default=150)
    w.add_argument("--batch_size", type=int, default=128)
    b = sub.add_parser("beam")
    b.add_argument("--export", required=True)
    b.add_argument("--examples", type=int, default=10_000)
    b.add_argument("--binarization", default="binary_static")
    args = parser.parse_args()
    record = workers(args) if args.what == "workers" else beam_scoring(args)
    record.update(
        cpus=os.cpu_count(), command="python -m benchmarks.scale " + " ".join(sys.argv[1:])
    )
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
