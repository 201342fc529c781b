"""Ranks exported generative models of every family on one table of sample quality.

    python -m benchmarks.compare --classifier=saved_models/classifier \
        saved_models/vae saved_models/gan [more export dirs ...]

Each argument is an export (a version directory, or a model root whose latest version is
used); with none, every model under --export_root with a `sample` signature is scored.
Paths that hold no export are listed as skipped, so the table runs with what exists.

Protocol (the same for every row, under one classifier's features, named in the output):
`--samples` images from the export's `sample(seed[, label])` signature (row i uses seed
[--seed, i]; conditional models get class-balanced labels) against the second half of the
MNIST test split; the floor is the first half against the second. Images reach the
classifier as 8-bit pixels: samples of binary models ({0, 1}, found by their range) are
scaled to {0, 255}. The ranking column FID compares every model with the real 8-bit test
images; for binary models FID_bin also compares them with the statically binarized test
images (the data they were trained on), against its own floor.

Beside sample quality, per export: the test NLL through its `log_prob` signature where it
has one (`gen_keras.scoring.log_prob`: exact for PixelCNN/PixelRNN, the IWAE bound of the
export's k for a VAE; nats per image, and bits/dim for 8-bit models) over the first
--nll_examples test images in the export's data space, and the sampling speed through its
`sample` signature (images/s over the --samples drawn, batches of 500, the first call
included), and the training minutes of the run it came from (the harness's training clock,
recorded in the export's metadata; "-" when not recorded).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from gen_keras import export, metrics, runs, scoring
from gen_keras.config import DataConfig, UsageError, check
from gen_keras.data import ImageData

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so its helpers import anywhere)."""
    flags.DEFINE_string("classifier", "", "Classifier export or run dir (the feature network).")
    flags.DEFINE_string("export_root", "saved_models", "Where to look when no exports are given.")
    flags.DEFINE_integer("samples", 5000, "Samples per model (and rows per test half).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("nll_examples", 10_000, "Test images of the NLL column (0: no NLL).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the usual search path).")
    flags.DEFINE_string("json", "", "Also write the table as JSON to this path.")


def reference_halves(n: int, mode: str = "uint8", data_dir: str | None = None):
    """Two disjoint halves of the MNIST test split, uint8 [n, 28, 28, 1] each, in data space
    (0..255 for mode=uint8, {0, 1} for binary_static)."""
    check(2 * n <= 10_000, f"samples={n}: the test split holds two halves of at most 5000")
    data = ImageData(
        DataConfig(binarization=mode, data_dir=data_dir, download=False),
        f"test[:{2 * n}]",
        training=False,
    )
    images = np.concatenate([b["image"].numpy() for b in data.dataset(1000)]).astype(np.uint8)
    return images[:n], images[n:]


def to_8bit(images: np.ndarray) -> tuple[np.ndarray, bool]:
    """uint8 images in a model's data space -> 0..255, and whether they were binary."""
    binary = int(images.max()) <= 1
    return (images * np.uint8(255) if binary else images), binary


class Reference:
    """Features of the test halves under one classifier, in 8-bit and binarized space."""

    def __init__(self, classifier, n: int, data_dir=None):
        self.classifier = classifier
        self.halves = {}
        for space, mode in (("8bit", "uint8"), ("binary", "binary_static")):
            a, b = reference_halves(n, mode, data_dir)
            scale = np.uint8(255) if mode != "uint8" else np.uint8(1)
            self.halves[space] = (classifier(a * scale), classifier(b * scale))

    def floor(self, space: str = "8bit") -> dict:
        (logits_a, feats_a), (_, feats_b) = self.halves[space]
        return metrics.scores(logits_a, feats_a, feats_b)

    def score(self, samples: np.ndarray, seed: int = 0) -> dict:
        """Figures of uint8 samples in their data space (binary or 8-bit)."""
        images, binary = to_8bit(samples)
        logits, feats = self.classifier(images)
        out = metrics.scores(logits, feats, self.halves["8bit"][1][1], seed=seed)
        out["binary"] = binary
        if binary:
            out["fid_bin"] = metrics.fid(feats, self.halves["binary"][1][1])
        return out


def test_nll(path: str, n: int, data_dir=None, batch: int = 500) -> dict:
    """{"nll_nats", "nll_bits_per_dim"} of an export over the first n test images, through
    its `log_prob` signature; {} when it has none (a GAN)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    if n <= 0 or "log_prob" not in loaded.signatures:
        return {}
    signature = loaded.signatures["log_prob"]
    spec = export.read_metadata(path)["spec"]
    data = ImageData(
        DataConfig(binarization="uint8", data_dir=data_dir, download=False),
        f"test[:{n}]",
        training=False,
    )
    nats = []
    for b in data.dataset(batch):
        pixels, labels = b["image"].numpy(), b["label"].numpy()
        nats.append(-scoring.log_prob(signature, pixels, spec["mode"], labels))
    nats = np.concatenate(nats)
    dims = int(np.prod(spec["shape"]))
    return {
        "nll_nats": float(nats.mean()),
        "nll_bits_per_dim": float(nats.mean() / (dims * np.log(2.0))),
        "nll_examples": len(nats),
    }


def discover(export_root: str) -> list[str]:
    """Model roots under export_root whose latest version has a `sample` signature."""
    import tensorflow as tf

    found = []
    for name in sorted(os.listdir(export_root)) if os.path.isdir(export_root) else []:
        path = runs.latest_export(os.path.join(export_root, name))
        if path and "sample" in tf.saved_model.load(path).signatures:
            found.append(os.path.join(export_root, name))
    return found


def _minutes(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def table(rows: list[dict], reference: Reference) -> str:
    """Markdown, ranked by FID against the 8-bit test half; floors first."""
    floor, floor_bin = reference.floor("8bit")["fid"], reference.floor("binary")["fid"]
    lines = [
        f"features: {reference.classifier.name}",
        f"floor (test half vs test half): FID {floor:.3f} (8-bit), {floor_bin:.3f} (binarized)",
        "",
        "| rank | export | pixels | FID | FID / floor | FID_bin | KID +- se "
        "| classifier score | min class % | class entropy | test NLL | samples/s "
        "| training min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(sorted(rows, key=lambda r: r["fid"]), 1):
        fid_bin = f"{r['fid_bin']:.3f}" if r["binary"] else "-"
        nll = "-"
        if "nll_nats" in r:
            nll = f"{r['nll_nats']:.2f} nats" + (
                "" if r["binary"] else f" ({r['nll_bits_per_dim']:.3f} bits/dim)"
            )
        lines.append(
            f"| {rank} | {r['export']} | {'binary' if r['binary'] else '8-bit'} "
            f"| {r['fid']:.3f} | {r['fid'] / floor:.1f} | {fid_bin} "
            f"| {r['kid']:.4g} +- {r['kid_stderr']:.2g} "
            f"| {r['classifier_score']:.2f} | {100 * r['class_min_fraction']:.1f} "
            f"| {r['class_entropy']:.3f} | {nll} | {r['samples_per_second']:.1f} "
            f"| {_minutes(r.get('train_seconds'))} |"
        )
    return "\n".join(lines)


def compare(
    paths,
    classifier_path,
    n,
    seed=0,
    data_dir=None,
    export_root="saved_models",
    nll_examples=10_000,
):
    """Scores each export; returns (markdown table, rows, skipped paths)."""
    check(bool(classifier_path), "--classifier is needed: a classifier export or run directory")
    paths = list(paths) or discover(export_root)
    exports = [(p, runs.latest_export(p)) for p in paths]
    skipped = [p for p, e in exports if e is None]
    check(
        len(skipped) < len(exports) or not exports,
        f"none of {', '.join(paths)} holds an export (<dir>/<version>/saved_model.pb)",
    )
    check(bool(exports), f"no exports given and none with a sample signature in {export_root}")
    reference = Reference(runs.load_classifier(classifier_path), n, data_dir)
    rows = []
    for _, path in (pe for pe in exports if pe[1] is not None):
        timing = {}
        samples = runs.sample_from_export(path, n, seed=seed, timing=timing)
        rows.append(
            {
                "export": path,
                **reference.score(samples, seed),
                "samples_per_second": n / timing["seconds"],
                **test_nll(path, nll_examples, data_dir),
                "train_seconds": export.read_metadata(path)
                .get("training", {})
                .get("train_seconds"),
            }
        )
    return table(rows, reference), rows, skipped


def main(argv):
    logging.set_verbosity(logging.WARNING)
    try:
        text, rows, skipped = compare(
            argv[1:],
            FLAGS.classifier,
            FLAGS.samples,
            FLAGS.seed,
            FLAGS.data_dir,
            FLAGS.export_root,
            FLAGS.nll_examples,
        )
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    for path in skipped:
        print(f"skipped: no export at {path}")
    print(text)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=2, default=float)


if __name__ == "__main__":
    define_flags()
    app.run(main)
