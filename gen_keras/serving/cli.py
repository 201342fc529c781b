"""Command line for served models.

    python -m gen_keras.serving.cli sample --model=vae --n=16 --out=grid.png
    python -m gen_keras.serving.cli sample --model=gan --label=3 --grpc=localhost:8500
    python -m gen_keras.serving.cli status --model=vae
    python -m gen_keras.serving.cli config --export_dir=saved_models --base_path=/models

`sample` asks the model server for n images (row i uses seed [--seed, i]) and writes
them as one PNG grid; it checks the reply (exactly n PNGs of one small size) before
decoding. Errors print one line and exit with code 2; `--timeout` bounds each request.

Nothing here imports TensorFlow: a usage error, `status`, `config` and `sample` over REST
start in a fraction of a second. Only `--grpc` loads it (TF Serving's protos need it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # --grpc loads TF: keep its C++ logs quiet

import numpy as np

from gen_keras import export_root, png
from gen_keras.serving import MAX_BATCH, ServingError, one_line
from gen_keras.serving.grpc_client import GrpcClient
from gen_keras.serving.rest import RestClient


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m gen_keras.serving.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="sample images into a PNG grid")
    sample.add_argument("--model", required=True)
    sample.add_argument("--n", type=int, default=16)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--label", type=int, default=None, help="class, for conditional models")
    sample.add_argument("--out", default="samples.png")
    sample.add_argument("--version", type=int, default=None)
    sample.add_argument("--rest", default="http://localhost:8501", help="REST base URL")
    sample.add_argument("--grpc", default=None, help="host:port; use gRPC instead of REST")
    status = commands.add_parser("status", help="a model's version status (REST)")
    status.add_argument("--model", required=True)
    status.add_argument("--rest", default="http://localhost:8501")
    for sub in (sample, status):
        sub.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    config = commands.add_parser("config", help="(re)write <export_dir>/models.config")
    config.add_argument("--export_dir", default="saved_models")
    config.add_argument(
        "--base_path",
        default=export_root.DOCKER_ROOT,
        help="where the server sees the export root (absolute path)",
    )
    return parser


def _predict(args, inputs: dict) -> dict:
    if not args.timeout > 0:
        raise ServingError(f"--timeout={args.timeout} must be > 0")
    if args.grpc:
        client = GrpcClient(args.grpc, timeout=args.timeout)
        try:
            return client.predict(args.model, inputs, "sample_png", args.version)
        finally:
            client.close()
    return RestClient(args.rest, timeout=args.timeout).predict(
        args.model, inputs, "sample_png", args.version
    )


def decode_samples(blobs, n: int) -> np.ndarray:
    """uint8 [n, H, W, C] from n PNG strings of one size; ServingError for anything else.

    Every header is read (and its size checked: at most png.MAX_SIDE a side) before any
    image is inflated.
    """
    blobs = list(np.asarray(blobs, dtype=object).ravel())
    if len(blobs) != n:
        raise ServingError(f"asked for {n} samples, the server returned {len(blobs)}")
    try:
        shapes = {png.header(blob) for blob in blobs}
    except ValueError as e:
        raise ServingError(f"the server's sample_png reply holds {e}") from None
    if len(shapes) != 1:
        raise ServingError(
            f"the server's samples differ in size: {sorted(shapes)} (height, width, channels)"
        )
    try:
        return np.stack([png.decode(blob) for blob in blobs])
    except ValueError as e:
        raise ServingError(f"a sample is not a valid PNG ({one_line(str(e), 120)})") from None


def sample(args) -> str:
    if not 1 <= args.n <= MAX_BATCH:
        raise ServingError(f"--n={args.n} must be in 1..{MAX_BATCH}")
    inputs = {"seed": np.stack([np.full(args.n, args.seed), np.arange(args.n)], 1).astype(np.int32)}
    if args.label is not None:
        inputs["label"] = np.full(args.n, args.label, np.int32)
    # sample_png: the model scales its own data space (e.g. binary {0, 1}) to 0..255
    outputs = _predict(args, inputs)
    if "png_bytes" not in outputs:
        raise ServingError(
            f"the server's sample_png reply has no png_bytes (got {sorted(outputs)})"
        )
    images = decode_samples(outputs["png_bytes"], args.n)
    try:
        png.write(args.out, png.grid(images / 255.0))
    except OSError as e:
        raise ServingError(f"cannot write --out={args.out}: {one_line(str(e), 160)}") from None
    return f"wrote {len(images)} samples of {args.model} to {args.out}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "sample":
            print(sample(args))
        elif args.command == "status":
            client = RestClient(args.rest, timeout=args.timeout)
            print(json.dumps(client.status(args.model), indent=2))
        else:
            path = export_root.write_models_config(args.export_dir, args.base_path)
            print(f"wrote {path} ({', '.join(export_root.exported_models(args.export_dir))})")
    except (ServingError, OSError) as e:
        sys.stderr.write(f"error: {one_line(str(e), 500)}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
