"""Command line for served models.

    python -m gen_keras.serving.cli sample --model=vae --n=16 --out=grid.png
    python -m gen_keras.serving.cli sample --model=gan --label=3 --grpc=localhost:8500
    python -m gen_keras.serving.cli status --model=vae
    python -m gen_keras.serving.cli config --export_dir=saved_models --base_path=/models

`sample` asks the model server for n images (row i uses seed [--seed, i]) and writes
them as one PNG grid; it checks the reply (exactly n PNGs of one small size) before
decoding. Errors print one line and exit with code 2; `--timeout` bounds each request.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a command line: keep TF's C++ logs quiet

import numpy as np
import tensorflow as tf

from gen_keras import contract, export, summaries
from gen_keras.serving import ServingError, one_line
from gen_keras.serving.grpc_client import GrpcClient
from gen_keras.serving.rest import RestClient

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_SIDE = 4096  # a sample wider or taller than this is refused before decoding


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
        default=export.DOCKER_ROOT,
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


def png_size(png) -> tuple[int, int]:
    """(width, height) from a PNG's header, checked before anything is decoded."""
    if not isinstance(png, bytes) or len(png) < 24 or not png.startswith(PNG_SIGNATURE):
        raise ServingError("the server's sample_png reply holds something that is not a PNG")
    if png[12:16] != b"IHDR":
        raise ServingError("the server's sample_png reply holds a PNG without a header")
    width, height = struct.unpack(">II", png[16:24])
    if not (1 <= width <= MAX_PNG_SIDE and 1 <= height <= MAX_PNG_SIDE):
        raise ServingError(
            f"the server sent a {width}x{height} PNG (at most {MAX_PNG_SIDE} a side accepted)"
        )
    return width, height


def decode_samples(pngs, n: int) -> np.ndarray:
    """uint8 [n, H, W, C] from n PNG strings of one size; ServingError for anything else."""
    pngs = list(np.asarray(pngs, dtype=object).ravel())
    if len(pngs) != n:
        raise ServingError(f"asked for {n} samples, the server returned {len(pngs)}")
    sizes = {png_size(png) for png in pngs}
    if len(sizes) != 1:
        raise ServingError(f"the server's samples differ in size: {sorted(sizes)}")
    try:
        images = np.stack([tf.io.decode_png(png).numpy() for png in pngs])
    except (tf.errors.OpError, ValueError) as e:
        raise ServingError(f"a sample is not a valid PNG ({one_line(str(e), 120)})") from None
    return images


def sample(args) -> str:
    if not 1 <= args.n <= contract.MAX_BATCH:
        raise ServingError(f"--n={args.n} must be in 1..{contract.MAX_BATCH}")
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
        summaries.write_png(args.out, summaries.grid(images / 255.0))
    except (OSError, tf.errors.OpError) as e:
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
            path = export.write_models_config(args.export_dir, args.base_path)
            print(f"wrote {path} ({', '.join(export.exported_models(args.export_dir))})")
    except (ServingError, OSError) as e:
        sys.stderr.write(f"error: {one_line(str(e), 500)}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
