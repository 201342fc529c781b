"""Beam batch inference: scores equal in-process scoring, on one and on two workers; samples
equal the export's own; TFRecord and TFDS sources; the command line; malformed records,
empty globs and corrupt files."""

import glob
import json
import os
import re
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from apache_beam.options.pipeline_options import PipelineOptions

from gen_keras import beam_inference, scoring
from gen_keras.config import UsageError
from gen_keras.data import to_example
from tests.conftest import REPO

N = 40


@pytest.fixture(scope="module")
def test_images(mnist_dir):
    raw = tfds.load("mnist", split=f"test[:{N}]", data_dir=mnist_dir, download=False, batch_size=-1)
    return raw["image"].numpy(), raw["label"].numpy()


@pytest.fixture(scope="module")
def records(test_images, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("records") / "data-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for image, label in zip(*test_images, strict=True):
            w.write(to_example(image, label))
    return path


def _read_scores(out):
    rows = [
        json.loads(line) for f in glob.glob(os.path.join(out, "scores-*.jsonl")) for line in open(f)
    ]
    return {row["key"]: row for row in rows}


@pytest.mark.parametrize(
    "options",
    [[], ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]],
    ids=["one_worker", "two_workers"],
)
def test_scores_equal_in_process_scoring(vae_run, records, test_images, tmp_path, options):
    out = str(tmp_path / "scores")
    with beam.Pipeline(options=PipelineOptions(options)) as p:
        images = beam_inference.read_tfrecords(p, [records], [28, 28, 1])
        beam_inference.score(images, vae_run.export_path, out, mode="binary_static", batch_size=16)
    rows = _read_scores(out)
    pixels, labels = test_images
    signature = tf.saved_model.load(vae_run.export_path).signatures["log_prob"]
    expected = -scoring.log_prob(signature, pixels, "binary_static", labels)
    keys = scoring.image_keys(pixels)
    assert len(rows) == N
    got = np.array([rows[int(k)]["nll_nats"] for k in keys])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert [rows[int(k)]["label"] for k in keys] == labels.tolist()
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["count"] == N
    assert summary["mean_nll_nats"] == pytest.approx(expected.mean(), rel=1e-5)
    assert summary["min_nll_nats"] == pytest.approx(expected.min(), rel=1e-5)


def test_tfds_source_scores_the_split(vae_run, mnist_dir, tmp_path):
    builder = tfds.builder("mnist", data_dir=mnist_dir)
    out = str(tmp_path / "scores")
    with beam.Pipeline() as p:
        images = beam_inference.read_tfds(p, builder, "test[:24]")
        beam_inference.score(images, vae_run.export_path, out, mode="binary_static")
    rows = _read_scores(out)
    assert len(rows) == 24 and all(row["bits_per_dim"] > 0 for row in rows.values())


def test_generate_writes_the_exports_own_samples(vae_run, tmp_path):
    out = str(tmp_path / "samples")
    with beam.Pipeline() as p:
        beam_inference.generate(p, vae_run.export_path, 12, out, seed=5, batch_size=5)
    pngs = sorted(glob.glob(os.path.join(out, "sample_*.png")))
    assert len(pngs) == 12
    sample = tf.saved_model.load(vae_run.export_path).signatures["sample"]
    expected = sample(seed=tf.constant([[5, i] for i in range(12)], tf.int32))["images"].numpy()
    first = tf.io.decode_png(tf.io.read_file(pngs[0])).numpy()
    np.testing.assert_array_equal(first, expected[0] * 255)  # binary model: 0/1 -> 0/255
    files = glob.glob(os.path.join(out, "samples-*.tfrecord.gz"))
    records = [r for f in files for r in tf.data.TFRecordDataset(f, compression_type="GZIP")]
    assert len(records) == 12


def test_command_line_scores_and_reports_bad_exports(vae_run, records, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "trainers.beam",
        "score",
        f"--export={vae_run.export_path}",
        f"--examples={records}",
        f"--out={tmp_path / 'cli'}",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(_read_scores(str(tmp_path / "cli"))) == N
    bad = subprocess.run(
        [*cmd[:4], f"--export={tmp_path}", f"--examples={records}", f"--out={tmp_path / 'x'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "is not a gen_keras export" in bad.stderr


# -- faults: malformed records, empty globs, corrupt files ------------------------------


@pytest.fixture(scope="module")
def mixed_records(test_images, tmp_path_factory):
    """N // 2 good records with 3 malformed ones between them: not an Example, a 5x5 image,
    no image at all."""
    path = str(tmp_path_factory.mktemp("mixed") / "mixed-00000-of-00001.gz")
    pixels, labels = test_images
    no_image = tf.train.Example()
    no_image.features.feature["label"].int64_list.value.append(1)
    bad = [
        b"not an example",
        to_example(np.zeros([5, 5, 1], np.uint8), 1),
        no_image.SerializeToString(),
    ]
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i in range(N // 2):
            w.write(to_example(pixels[i], labels[i]))
            if i % 6 == 1 and bad:
                w.write(bad.pop())
    return path


def test_malformed_records_are_counted_skipped_and_dead_lettered(vae_run, mixed_records, tmp_path):
    out = str(tmp_path / "scores")
    pipeline = beam.Pipeline()
    images = beam_inference.read_tfrecords(
        pipeline, [mixed_records], [28, 28, 1], dead_letter=os.path.join(out, "malformed")
    )
    beam_inference.score(images, vae_run.export_path, out, mode="binary_static", batch_size=8)
    result = pipeline.run()
    result.wait_until_finish()
    assert beam_inference.counter(result, "malformed_records") == 3
    assert beam_inference.counter(result, "records") == N // 2
    assert len(_read_scores(out)) == N // 2
    dead = [
        json.loads(line)
        for f in glob.glob(os.path.join(out, "malformed-*.jsonl"))
        for line in open(f)
    ]
    assert len(dead) == 3 and all("\n" not in row["error"] for row in dead)
    assert any("the export takes [28, 28, 1]" in row["error"] for row in dead)


def test_a_pattern_matching_no_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="matches no file"):
        beam_inference.read_tfrecords(beam.Pipeline(), [str(tmp_path / "*.gz")], [28, 28, 1])


def test_command_line_faults_are_one_line(vae_run, records, mixed_records, tmp_path):
    good = open(records, "rb").read()
    corrupt = {
        "truncated.gz": good[: len(good) // 2],
        "not_gzip.gz": b"\x00\x01garbage" * 300,
    }
    for name, data in corrupt.items():
        (tmp_path / name).write_bytes(data)
    cases = [
        (str(tmp_path / "*.gz"), 2, "not a readable gzipped TFRecord file"),
        (mixed_records, 0, "skipped 3 malformed records"),
    ]
    for pattern, code, message in cases:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainers.beam",
                "score",
                f"--export={vae_run.export_path}",
                f"--examples={pattern}",
                f"--out={tmp_path / 'out'}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == code, (pattern, result.stderr[-2000:])
        assert message in result.stdout + result.stderr, (pattern, result.stderr[-2000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == (1 if code else 0) and "Traceback" not in result.stderr
        assert not re.search(r"b'[0-9a-f]{16}", result.stderr)  # no hex dump
