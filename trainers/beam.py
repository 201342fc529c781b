"""Batch inference on Apache Beam (needs the `beam` extra).

    python -m trainers.beam score --export=saved_models/vae/1 --tfds=mnist:test --out=runs/scores
    python -m trainers.beam score --export=saved_models/vae/1 \\
        --examples='pipelines/vae/ExampleGen/1/Split-eval/*.gz' --out=runs/scores
    python -m trainers.beam generate --export=saved_models/gan/1 --n=1000 --out=runs/samples

A malformed record is skipped, counted and written to <out>/malformed-*.jsonl; a pattern
matching no file or a corrupt file stops with one line (exit 2; a failed job exits 1).

Any other arguments are Beam pipeline options, e.g. `--direct_num_workers=2
--direct_running_mode=multi_processing` here, `--runner=DataflowRunner --project=...` there.
"""

import argparse
import logging
import os
import sys

from gen_keras import data, export
from gen_keras.config import UsageError
from trainers import common  # noqa: F401 - quiets TF's C++ logs

try:  # the optional `beam` extra
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from gen_keras import beam_inference
except ImportError as e:
    beam, MISSING = None, e


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m trainers.beam",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.error = lambda message: (sys.stderr.write(f"error: {message}\n"), sys.exit(2))
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="per-image NLL and summary statistics")
    score.add_argument("--export", required=True, help="an export version directory")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--examples", help="TFRecord files or glob (to_example records)")
    source.add_argument("--tfds", help="dataset:split, e.g. mnist:test")
    score.add_argument("--data_dir", default=None, help="TFDS data dir")
    score.add_argument("--binarization", default=None, help="default: the export's data mode")
    score.add_argument("--out", required=True)
    generate = commands.add_parser("generate", help="N samples as PNG and TFRecord")
    generate.add_argument("--export", required=True)
    generate.add_argument("--n", type=int, required=True)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--label", type=int, default=None)
    generate.add_argument("--out", required=True)
    for sub in (score, generate):
        sub.add_argument("--batch_size", type=int, default=256)
        sub.error = parser.error
    return parser


def main(argv=None) -> int:
    args, beam_args = _parser().parse_known_args(argv)
    if beam is None:
        sys.stderr.write(
            f"error: {MISSING}; install the beam extra: pip install 'gen-keras[beam]'\n"
        )
        return 2
    try:
        spec = export.read_metadata(args.export)["spec"]
    except OSError:
        sys.stderr.write(
            f"error: --export={args.export} is not a gen_keras export version "
            "directory (no assets.extra/gen_keras.json)\n"
        )
        return 2
    # A failing DoFn is also logged with its traceback by Beam; the one line below says it.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    try:
        malformed = _run(args, beam_args, spec)
    except Exception as e:  # a usage error, a corrupt file, a failed job: one line, no dump
        message = " ".join(str(e).split())
        sys.stderr.write(f"error: {message[:400]}\n")
        return 2 if isinstance(e, (UsageError, ValueError)) else 1
    if malformed:
        print(f"skipped {malformed} malformed records: {args.out}/malformed-*.jsonl")
    print(f"wrote {args.out}")
    return 0


def _run(args, beam_args, spec) -> int:
    """Runs the job; returns the number of malformed records skipped."""
    if args.batch_size < 1:
        raise UsageError(f"--batch_size={args.batch_size} must be >= 1")
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    if args.command == "generate":
        beam_inference.generate(
            pipeline,
            args.export,
            args.n,
            args.out,
            seed=args.seed,
            label=args.label,
            batch_size=args.batch_size,
        )
    else:
        if args.examples:
            images = beam_inference.read_tfrecords(
                pipeline,
                [args.examples],
                spec["shape"],
                dead_letter=os.path.join(args.out, "malformed"),
            )
        else:
            name, _, split = args.tfds.partition(":")
            config = data.DataConfig(dataset=name, data_dir=args.data_dir, download=False)
            builder = data.builder_for(config)
            images = beam_inference.read_tfds(pipeline, builder, split or "test")
        beam_inference.score(
            images,
            args.export,
            args.out,
            mode=args.binarization or spec["mode"],
            batch_size=args.batch_size,
        )
    result = pipeline.run()
    result.wait_until_finish()
    return beam_inference.counter(result, "malformed_records")


if __name__ == "__main__":
    sys.exit(main())
