"""Serving latency: p50/p99 and throughput per signature through the TF Serving loader path.

    python -m benchmarks.serving                       # default architectures, exported fresh
    python -m benchmarks.serving --export_root=saved_models   # your trained exports instead

Each export is loaded as tensorflow_model_server loads it (TF1 Session + loader, run by
SignatureDef tensor names) and called repeatedly in one thread. Latency does not depend on
the weights' values, so freshly built default models measure the same as trained ones.
Targets (issue 7, this CPU): VAE sample and log_prob at batch 1 p50 <= 5 ms; GAN sample of
64 p50 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gen_keras import export, models  # noqa: E402
from gen_keras.data import DataSpec  # noqa: E402
from gen_keras.serving.session import SessionModel  # noqa: E402

MNIST_BINARY = DataSpec((28, 28, 1), "binary_static", 10)
# (model, data spec, signature, batch sizes): the cases issue 7 names
CASES = [
    ("vae", MNIST_BINARY, "sample", (1, 64)),
    ("vae", MNIST_BINARY, "log_prob", (1, 64)),
    ("gan", DataSpec((28, 28, 1), "float_symmetric", 10), "sample", (1, 64)),
    ("pixelcnn", MNIST_BINARY, "sample", (16,)),
    ("pixelcnn", MNIST_BINARY, "log_prob", (1, 64)),
    ("pixelrnn", MNIST_BINARY, "log_prob", (1, 64)),
]


def _export(family: str, spec: DataSpec, root: str) -> str:
    module = models.get(family)
    model = module.build(module.Config(), spec, 1e-3)
    model.build_for_training(
        {"image": tf.zeros([2, *spec.shape]), "label": tf.zeros([2], tf.int32)}
    )
    return export.export(model, root)


def _inputs(served: SessionModel, signature: str, spec: DataSpec, n: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for name, info in served.signatures[signature].inputs.items():
        shape = [n if d.size == -1 else d.size for d in info.tensor_shape.dim]
        if name == "images":
            out[name] = rng.integers(0, spec.max_value + 1, shape).astype(np.uint8)
        elif name == "seed":
            out[name] = rng.integers(0, 2**20, shape).astype(np.int32)
        elif name == "label":
            out[name] = rng.integers(0, spec.num_classes, shape).astype(np.int32)
        else:
            out[name] = rng.normal(size=shape).astype(np.float32)
    return out


def measure(served, signature, inputs, seconds: float, min_calls: int) -> dict:
    for _ in range(3):
        served(signature, **inputs)  # warm up
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        served(signature, **inputs)
        times.append(time.perf_counter() - t)
    times = np.array(times) * 1000.0
    n = len(next(iter(inputs.values())))
    return {
        "calls": len(times),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
        "rows_per_sec": round(n * 1000.0 / float(times.mean()), 1),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--export_root",
        default=None,
        help="use <root>/<model>/<latest> instead of fresh default exports",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per case, at least")
    parser.add_argument("--min_calls", type=int, default=20)
    parser.add_argument("--out", default=os.path.join("benchmarks", "runs", "serving.jsonl"))
    args = parser.parse_args()
    root = args.export_root or tempfile.mkdtemp(prefix="serving-bench-")
    rows = []
    for family in dict.fromkeys(c[0] for c in CASES):
        spec = next(c[1] for c in CASES if c[0] == family)
        if args.export_root:
            versions = export.versions(os.path.join(root, family))
            if not versions:
                print(f"skip {family}: no export under {root}")
                continue
            path = os.path.join(root, family, str(versions[-1]))
        else:
            path = _export(family, spec, root)
        with SessionModel(path) as served:
            for _, _, signature, batches in (c for c in CASES if c[0] == family):
                for n in batches:
                    row = {
                        "model": family,
                        "signature": signature,
                        "batch": n,
                        **measure(
                            served,
                            signature,
                            _inputs(served, signature, spec, n),
                            args.seconds,
                            args.min_calls,
                        ),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        f.write(
            json.dumps(
                {
                    "benchmark": "serving",
                    "export_root": args.export_root,
                    "cpus": os.cpu_count(),
                    "rows": rows,
                }
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
