"""Command line for served models.

    python -m gen_keras.serving.cli sample --model=vae --n=16 --out=grid.png
    python -m gen_keras.serving.cli sample --model=gan --label=3 --grpc=localhost:8500
    python -m gen_keras.serving.cli status --model=vae
    python -m gen_keras.serving.cli config --export_dir=saved_models --base_path=/models

`sample` asks the model server for n images (row i uses seed [--seed, i]) and writes
them as one PNG grid. Errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a command line: keep TF's C++ logs quiet

import numpy as np
import tensorflow as tf

from gen_keras import contract, export, summaries
from gen_keras.serving import ServingError


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
    config = commands.add_parser("config", help="(re)write <export_dir>/models.config")
    config.add_argument("--export_dir", default="saved_models")
    config.add_argument(
        "--base_path",
        default=export.DOCKER_ROOT,
        help="where the server sees the export root (absolute path)",
    )
    return parser


def _client(args):
    if args.grpc:
        from gen_keras.serving.grpc_client import GrpcClient

        return GrpcClient(args.grpc)
    from gen_keras.serving.rest import RestClient

    return RestClient(args.rest)


def sample(args) -> str:
    if not 1 <= args.n <= contract.MAX_BATCH:
        raise ServingError(f"--n={args.n} must be in 1..{contract.MAX_BATCH}")
    inputs = {"seed": np.stack([np.full(args.n, args.seed), np.arange(args.n)], 1).astype(np.int32)}
    if args.label is not None:
        inputs["label"] = np.full(args.n, args.label, np.int32)
    # sample_png: the model scales its own data space (e.g. binary {0, 1}) to 0..255
    pngs = _client(args).predict(args.model, inputs, "sample_png", args.version)["png_bytes"]
    images = np.stack([tf.io.decode_png(png).numpy() for png in pngs.ravel()])
    summaries.write_png(args.out, summaries.grid(images / 255.0))
    return f"wrote {args.n} samples of {args.model} to {args.out}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "sample":
            print(sample(args))
        elif args.command == "status":
            from gen_keras.serving.rest import RestClient

            print(json.dumps(RestClient(args.rest).status(args.model), indent=2))
        else:
            path = export.write_models_config(args.export_dir, args.base_path)
            print(f"wrote {path} ({', '.join(export.exported_models(args.export_dir))})")
    except ServingError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
