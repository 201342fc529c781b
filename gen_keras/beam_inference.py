"""Batch inference on Apache Beam (the optional `beam` extra): score images, generate samples.

- `score`: reads tf.Example TFRecords (ExampleGen's `Split-*/` files, or any files of
  `gen_keras.data.to_example` records), scores every image with an export's `log_prob`
  through `apache_beam.ml.inference.RunInference`, writes per-image NLL (nats and
  bits/dim: an anomaly score) as JSON lines, and summary statistics.
- `generate`: N samples from an export's `sample` signature (row i uses seed [seed, i]) as
  PNG files and a TFRecord of tf.Examples.

Bad input does not abort a job silently or noisily: a record that is not a valid
`to_example` image is counted (`malformed_records`) and skipped, or written to a dead-letter
file; a pattern that matches no file is a UsageError; a corrupt file (bad gzip, bad
TFRecord framing) stops the job with a one-line `CorruptFileError` naming it.

Both run on the DirectRunner here (`--direct_num_workers=2`) and on Dataflow, Flink or
Spark elsewhere with the usual Beam pipeline options. Per-row seeds keyed by the image's
index make every score independent of batching and workers (see `gen_keras.scoring`).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

from gen_keras import export, scoring
from gen_keras.config import DataConfig, UsageError
from gen_keras.data import EXAMPLE_FEATURES, to_example

METRICS_NAMESPACE = "gen_keras.beam"
MALFORMED = "malformed"  # the tag of records that are not valid images


class CorruptFileError(ValueError):
    """An input file cannot be read (not gzip, broken TFRecord framing); one line."""


def _first_line(error, limit: int = 200) -> str:
    """An error's message on one line, without TF's function-node and op decorations."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\]( name:\S*)?", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SignatureHandler(TFModelHandlerNumpy):
    """RunInference through one signature of a SavedModel (tf.saved_model.load, not Keras).

    Elements are dicts of numpy arrays; `inference_fn(signature, batch) -> list of results`.
    """

    def __init__(self, export_dir: str, signature: str, inference_fn, max_batch_size=256):
        super().__init__(export_dir, inference_fn=self._run, max_batch_size=max_batch_size)
        self._signature, self._fn = signature, inference_fn

    def load_model(self):
        return tf.saved_model.load(self._model_uri)

    def _run(self, model, batch, inference_args, model_id=None):
        del inference_args
        outputs = self._fn(model.signatures[self._signature], batch)
        return [PredictionResult(x, y, model_id) for x, y in zip(batch, outputs, strict=True)]


def parse_example(record: bytes, shape) -> dict:
    example = tf.io.parse_single_example(record, EXAMPLE_FEATURES)
    pixels = tf.io.decode_raw(example["image"], tf.uint8)
    if int(tf.size(pixels)) != int(np.prod(shape)):
        raise ValueError(f"image has {int(tf.size(pixels))} bytes, the export takes {list(shape)}")
    image = tf.reshape(pixels, shape)
    return {"image": image.numpy(), "label": int(example["label"])}


def _score_fn(mode: str, num_dims: int, binarization_seed: int):
    def score(signature, batch):
        nats = -scoring.log_prob(
            signature,
            np.stack([b["image"] for b in batch]),
            mode,
            np.array([b["label"] for b in batch]),
            binarization_seed,
        )
        return [
            {"nll_nats": float(v), "bits_per_dim": float(v) / (num_dims * math.log(2))}
            for v in nats
        ]

    return score


class _Summary(beam.CombineFn):
    """count, mean, std, min, max of per-image NLL (nats), in one pass."""

    def create_accumulator(self):
        return (0, 0.0, 0.0, math.inf, -math.inf)

    def add_input(self, acc, x):
        n, s, s2, lo, hi = acc
        return n + 1, s + x, s2 + x * x, min(lo, x), max(hi, x)

    def merge_accumulators(self, accs):
        accs = list(accs)
        return (
            sum(a[0] for a in accs),
            sum(a[1] for a in accs),
            sum(a[2] for a in accs),
            min(a[3] for a in accs),
            max(a[4] for a in accs),
        )

    def extract_output(self, acc):
        n, s, s2, lo, hi = acc
        mean = s / max(n, 1)
        return {
            "count": n,
            "mean_nll_nats": mean,
            "std_nll_nats": math.sqrt(max(s2 / max(n, 1) - mean * mean, 0.0)),
            "min_nll_nats": lo,
            "max_nll_nats": hi,
        }


class _ParseOrSetAside(beam.DoFn):
    """record -> {"image", "label"}; a malformed record goes to the MALFORMED output instead
    ({"error", "bytes", "head_b64"}) and is counted."""

    def __init__(self, shape):
        self._shape = tuple(shape)
        self._malformed = Metrics.counter(METRICS_NAMESPACE, "malformed_records")
        self._parsed = Metrics.counter(METRICS_NAMESPACE, "records")

    def process(self, record):
        try:
            parsed = parse_example(record, self._shape)
        except (tf.errors.OpError, ValueError, TypeError) as e:
            self._malformed.inc()
            yield beam.pvalue.TaggedOutput(
                MALFORMED,
                {
                    "error": _first_line(e),
                    "bytes": len(record),
                    "head_b64": base64.b64encode(bytes(record[:48])).decode(),
                },
            )
            return
        self._parsed.inc()
        yield parsed


def _read_file(path: str):
    """The records of one gzipped TFRecord file; CorruptFileError (one line) if it breaks."""
    n = 0
    try:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            yield record
            n += 1
    except tf.errors.OpError as e:
        raise CorruptFileError(
            f"{path}: not a readable gzipped TFRecord file after {n} records ({_first_line(e)})"
        ) from None


def match_files(patterns: list[str]) -> list[str]:
    """The files matching each pattern (local, gs://, ...); UsageError if one matches none."""
    files = []
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # BeamIOError and friends: say which pattern
            raise UsageError(
                f"--examples={pattern}: cannot list files ({_first_line(e)})"
            ) from None
        paths = sorted(m.path for m in matched if not m.path.endswith("/"))
        if not paths:
            raise UsageError(f"--examples={pattern} matches no file")
        files += paths
    return files


def read_tfrecords(pipeline, files: list[str], shape, dead_letter: str | None = None):
    """Images from gzipped TFRecords of `to_example` records (ExampleGen's Split-*/ files).

    files: paths or glob patterns, each must match at least one file (UsageError). Malformed
    records are skipped and counted (metric `malformed_records`); with dead_letter, also
    written to <dead_letter>-*.jsonl.
    """
    parsed = (
        pipeline
        | "Files" >> beam.Create(match_files(list(files)))
        | "Spread" >> beam.Reshuffle()
        | "Read" >> beam.FlatMap(_read_file)
        | "Parse" >> beam.ParDo(_ParseOrSetAside(shape)).with_outputs(MALFORMED, main="images")
    )
    if dead_letter:
        _ = (
            parsed[MALFORMED]
            | "MalformedJson" >> beam.Map(json.dumps)
            | "WriteMalformed" >> beam.io.WriteToText(dead_letter, file_name_suffix=".jsonl")
        )
    return parsed["images"]


def counter(result, name: str) -> int:
    """A gen_keras.beam counter of a finished pipeline (e.g. "malformed_records")."""
    query = result.metrics().query()
    return int(
        sum(
            c.committed or 0
            for c in query["counters"]
            if c.key.metric.namespace == METRICS_NAMESPACE and c.key.metric.name == name
        )
    )


def read_tfds(pipeline, builder, split: str):
    """Images from a prepared TFDS split, read in parallel by tfds.beam.ReadFromTFDS."""
    import tensorflow_datasets as tfds

    return (
        pipeline
        | "ReadTFDS" >> tfds.beam.ReadFromTFDS(builder, split)
        | "Pick"
        >> beam.Map(
            lambda ex: {"image": np.asarray(ex["image"], np.uint8), "label": int(ex["label"])}
        )
    )


def score(
    images,
    export_dir: str,
    out: str,
    *,
    mode: str,
    batch_size: int = 256,
    binarization_seed: int = DataConfig.binarization_seed,
):
    """Scores a PCollection of {"image": uint8 [H, W, C], "label"} with the export's log_prob.

    Binary modes binarize each image with `gen_keras.data.binarize(images,
    binarization_seed)`, the draw the model was trained and evaluated on.

    Writes <out>/scores-*.jsonl (one row per image: key, label, nll_nats, bits_per_dim;
    key = scoring.image_keys) and <out>/summary.json; returns the PCollection of rows.
    """
    metadata = export.read_metadata(export_dir)
    num_dims = int(np.prod(metadata["spec"]["shape"]))
    handler = SignatureHandler(
        export_dir, "log_prob", _score_fn(mode, num_dims, binarization_seed), batch_size
    )
    scored = (
        images
        | "Score" >> RunInference(handler)
        | "Row"
        >> beam.Map(
            lambda r: {
                "key": int(scoring.image_keys(r.example["image"][None])[0]),
                "label": r.example["label"],
                **r.inference,
            }
        )
    )
    _ = (
        scored
        | "Json" >> beam.Map(json.dumps)
        | "Write" >> beam.io.WriteToText(os.path.join(out, "scores"), file_name_suffix=".jsonl")
    )
    _ = (
        scored
        | "Nats" >> beam.Map(lambda row: row["nll_nats"])
        | "Summary" >> beam.CombineGlobally(_Summary())
        | "SummaryJson"
        >> beam.Map(lambda s: json.dumps({**s, "export": export_dir, "data_mode": mode}, indent=2))
        | "WriteSummary"
        >> beam.io.WriteToText(
            os.path.join(out, "summary"), file_name_suffix=".json", shard_name_template=""
        )
    )
    return scored


def _sample_fn(seed: int, label: int | None):
    def sample(signature, batch):
        rows = np.array([[seed, i] for i in batch], np.int32)
        kwargs = {"seed": tf.constant(rows)}
        if label is not None:
            kwargs["label"] = tf.fill([len(batch)], label)
        images = signature(**kwargs)["images"].numpy()
        return list(images)

    return sample


def _write_sample(element, out: str, scale: int):
    index, image, label = element
    tf.io.write_file(
        os.path.join(out, f"sample_{index:06d}.png"), tf.io.encode_png(image * np.uint8(scale))
    )
    return to_example(image, -1 if label is None else label)


def generate(
    pipeline,
    export_dir: str,
    n: int,
    out: str,
    *,
    seed: int = 0,
    label: int | None = None,
    batch_size: int = 256,
):
    """Adds the generation job: <out>/sample_NNNNNN.png and <out>/samples-*.tfrecord.gz.

    Binary models' {0, 1} images are scaled to 0/255 in the PNGs; the TFRecords keep the
    data space.
    """
    binary = export.read_metadata(export_dir)["spec"]["mode"].startswith("binary")
    if not 1 <= n:
        raise ValueError(f"n={n} must be >= 1")
    handler = SignatureHandler(export_dir, "sample", _sample_fn(seed, label), batch_size)
    samples = (
        pipeline
        | "Indices" >> beam.Create(list(range(n)))
        | "Sample" >> RunInference(handler)
        | "Unpack" >> beam.Map(lambda r: (int(r.example), r.inference, label))
    )
    return (
        samples
        | "Png" >> beam.Map(_write_sample, out=out, scale=255 if binary else 1)
        | "Records"
        >> beam.io.WriteToTFRecord(
            os.path.join(out, "samples"), file_name_suffix=".tfrecord.gz", compression_type="gzip"
        )
    )
