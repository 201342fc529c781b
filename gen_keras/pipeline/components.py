"""The four components. Each is `fn(inputs, properties, output_dir) -> outputs`, where
inputs and outputs are {name: Artifact}; `runner.run_component` records and caches them.

- example_gen: TFDS split -> gzipped tf.Example TFRecords in TFX's layout
  (`Split-train/`, `Split-eval/`) plus statistics (counts, pixel mean/std, labels).
- trainer: imports `module` and calls its `run_fn(FnArgs(...))`.
- importer: brings an existing artifact (a classifier export) in, with an id and lineage.
- evaluator: the family's metric on the eval split (NLL in nats and bits/dim for
  likelihood models, ELBO/IWAE for the VAE, accuracy for the classifier, reconstruction
  error for the autoencoder, FID/KID on a classifier's features for the GAN); blesses a
  model that meets the thresholds and is no worse than the currently pushed version.
- pusher: copies a blessed model to `<export_dir>/<model>/<next version>/` atomically and
  refreshes `models.config`; an unblessed model is not pushed, and the artifact says why.
"""

from __future__ import annotations

import importlib
import json
import math
import os

import numpy as np
import tensorflow as tf

from gen_keras import export, metrics, runs, scoring
from gen_keras.config import DataConfig, check, from_dict
from gen_keras.data import DataSpec, load_raw, tfrecord_source, to_example
from gen_keras.pipeline.fn_args import FnArgs
from gen_keras.pipeline.metadata import Artifact

SPLITS = {"train": "train_split", "eval": "eval_split"}


def _split_files(examples: Artifact, split: str) -> list[str]:
    return [os.path.join(examples.uri, f"Split-{split}", "*.gz")]


def example_gen(inputs: dict, props: dict, out: str) -> dict:
    """props: dataset, data_dir, manual_dir, train_split, eval_split (TFDS names)."""
    del inputs
    config = from_dict(DataConfig, {**props, "download": props.get("download", True)})
    counts, stats, shape, num_classes = {}, {}, None, None
    for split, field in SPLITS.items():
        ds, _, shape, num_classes = load_raw(config, getattr(config, field))
        folder = os.path.join(out, f"Split-{split}")
        os.makedirs(folder)
        total = s1 = s2 = 0
        labels = np.zeros(num_classes, np.int64)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        path = os.path.join(folder, "data_tfrecord-00000-of-00001.gz")
        with tf.io.TFRecordWriter(path, options) as writer:
            for example in ds.as_numpy_iterator():
                image, label = example["image"], int(example["label"])
                writer.write(to_example(image, label))
                pixels = image.astype(np.float64)
                total, s1, s2 = total + 1, s1 + pixels.mean(), s2 + (pixels**2).mean()
                labels[label] += 1
        mean = s1 / max(total, 1)
        counts[split] = total
        stats[split] = {
            "count": total,
            "pixel_mean": mean,
            "pixel_std": math.sqrt(max(s2 / max(total, 1) - mean**2, 0.0)),
            "label_counts": labels.tolist(),
        }
    stats_path = os.path.join(out, "statistics.json")
    with open(stats_path, "w") as f:
        json.dump(stats, f, indent=2)
    examples = Artifact(
        "Examples",
        out,
        {
            "splits": list(SPLITS),
            "counts": counts,
            "image_shape": list(shape),
            "num_classes": int(num_classes),
            "dataset": config.dataset,
        },
    )
    return {"examples": examples, "statistics": Artifact("ExampleStatistics", stats_path, stats)}


def trainer(inputs: dict, props: dict, out: str) -> dict:
    """props: module, train_steps (None: the custom_config's epochs), eval_steps,
    custom_config (family, model, train, ...)."""
    examples = inputs["examples"]
    custom = {
        **props.get("custom_config", {}),
        "image_shape": examples.properties["image_shape"],
        "num_classes": examples.properties["num_classes"],
    }
    fn_args = FnArgs(
        working_dir=out,
        train_files=_split_files(examples, "train"),
        eval_files=_split_files(examples, "eval"),
        train_steps=props.get("train_steps"),
        eval_steps=props.get("eval_steps"),
        serving_model_dir=os.path.join(out, "Format-Serving"),
        model_run_dir=os.path.join(out, "run"),
        custom_config=custom,
    )
    module = importlib.import_module(props.get("module", "gen_keras.pipeline.trainer_module"))
    module.run_fn(fn_args)
    check(
        os.path.exists(os.path.join(fn_args.serving_model_dir, "saved_model.pb")),
        f"{module.__name__}.run_fn wrote no SavedModel to {fn_args.serving_model_dir}",
    )
    family = custom.get("family")
    return {
        "model": Artifact("Model", fn_args.serving_model_dir, {"family": family}),
        "model_run": Artifact("ModelRun", fn_args.model_run_dir, {"family": family}),
    }


def importer(inputs: dict, props: dict, out: str) -> dict:
    """props: uri, type. Brings an artifact made elsewhere (e.g. a classifier export) into
    the pipeline, as TFX's Importer does, so it has an id, lineage and a cache identity."""
    del inputs, out
    check(
        os.path.exists(props["uri"]),
        f"{props['type']} {props['uri']!r} does not exist; give an existing path",
    )
    return {"result": Artifact(props["type"], os.path.abspath(props["uri"]), {"imported": True})}


def _eval_batches(examples: Artifact, limit: int | None, batch: int = 256):
    """(raw uint8 images [B, H, W, C], int labels [B]) of the eval split, in order."""
    shape, num_classes = examples.properties["image_shape"], examples.properties["num_classes"]
    ds, _, _, _ = tfrecord_source(
        _split_files(examples, "eval"),
        shape,
        num_classes,
        num_examples=examples.properties["counts"]["eval"],
    )
    if limit:
        ds = ds.take(limit)
    for b in ds.batch(batch).as_numpy_iterator():
        yield b["image"], b["label"]


def likelihood(model_dir: str, examples: Artifact, props: dict) -> dict:
    """Mean negative log-likelihood (nats per image, bits/dim) via the `log_prob` signature;
    a VAE's is its IWAE bound, and its mean `elbo` and `iwae` (nats) are reported too.

    Scores with `gen_keras.scoring`, so every model sees the same binarization and noise
    for each image as the training harness and the Beam scoring job.
    """
    signature = tf.saved_model.load(model_dir).signatures["log_prob"]
    sums, count = {}, 0
    for images, labels in _eval_batches(examples, props.get("eval_examples")):
        values = scoring.bounds(signature, images, props["mode"], labels, props["seed"])
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + float(value.sum())
        count += len(images)
    nats = -sums.pop("log_prob") / count
    dims = int(np.prod(examples.properties["image_shape"]))
    return {
        "nll_nats": nats,
        "nll_bits_per_dim": nats / (dims * math.log(2)),
        **{name: total / count for name, total in sums.items()},
        "eval_examples": count,
    }


def accuracy(model_dir: str, examples: Artifact, props: dict) -> dict:
    """Test accuracy and error count of a classifier's `classify` signature."""
    signature = tf.saved_model.load(model_dir).signatures["classify"]
    correct = count = 0
    for images, labels in _eval_batches(examples, props.get("eval_examples")):
        data = scoring.to_data_space(images, props["mode"], props["seed"])
        predicted = signature(images=data)["logits"].numpy().argmax(-1)
        correct += int((predicted == labels).sum())
        count += len(images)
    return {"accuracy": correct / count, "errors": count - correct, "eval_examples": count}


def reconstruction(model_dir: str, examples: Artifact, props: dict) -> dict:
    """Mean squared error per pixel, in [0, 1] units, of the `reconstruct` signature's
    images against their inputs (for binary data: the fraction of pixels it gets wrong)."""
    loaded = tf.saved_model.load(model_dir)
    signature = loaded.signatures["reconstruct"]
    scale = 1.0 if props["mode"].startswith("binary") else 255.0
    total = count = 0.0
    for images, _ in _eval_batches(examples, props.get("eval_examples")):
        data = scoring.to_data_space(images, props["mode"], props["seed"])
        back = signature(images=data)["images"].numpy().astype(np.float64)
        total += float((((back - data.numpy()) / scale) ** 2).mean(axis=(1, 2, 3)).sum())
        count += len(images)
    return {"reconstruction_mse": total / count, "eval_examples": int(count)}


def sample_quality(model_dir: str, examples: Artifact, props: dict) -> dict:
    """FID, KID (and its standard error), classifier score and class coverage of
    `fid_samples` samples from the `sample` signature (row i: seed [0, i]) against the eval
    images, under the features of the classifier export in props["classifier"]."""
    classifier_dir = runs.latest_export(props["classifier"])
    if classifier_dir is not None:
        theirs = export.read_metadata(classifier_dir)["spec"]
        mine = export.read_metadata(model_dir)["spec"]
        check(
            DataSpec.from_json(theirs).max_value == DataSpec.from_json(mine).max_value,
            f"the classifier at {classifier_dir} takes {theirs['mode']} images, the model "
            f"makes {mine['mode']} ones: train the classifier on --binarization="
            f"{mine['mode']}",
        )
    reference = np.concatenate(
        [
            scoring.to_data_space(images, props["mode"], props["seed"]).numpy()
            for images, _ in _eval_batches(examples, props.get("eval_examples"))
        ]
    )
    quality = metrics.SampleQuality(runs.load_classifier(props["classifier"]), reference)
    n = int(props.get("fid_samples", 1000))
    samples = runs.sample_from_export(
        model_dir, n, seed=0, num_classes=examples.properties["num_classes"]
    )
    values = quality.evaluate(samples)
    return {
        **{k: v for k, v in values.items() if not k.startswith("class_fraction_")},
        "samples": n,
        "eval_examples": len(reference),
        "classifier": quality.classifier.name,
    }


# family -> (its Evaluator metric function, the metric that decides against the baseline)
METRICS = {
    "pixelcnn": (likelihood, "nll_nats"),
    "pixelrnn": (likelihood, "nll_nats"),
    "vae": (likelihood, "nll_nats"),
    "autoencoder": (reconstruction, "reconstruction_mse"),
    "classifier": (accuracy, "accuracy"),
    "gan": (sample_quality, "fid"),
}
NEEDS_CLASSIFIER = frozenset({"gan"})  # families scored on a classifier's features
HIGHER_IS_BETTER = frozenset(
    {"accuracy", "elbo", "iwae", "classifier_score", "class_entropy", "class_min_fraction"}
)


def worse(metric: str, value: float, than: float) -> bool:
    """Whether value is worse than `than` for this metric (direction-aware)."""
    return value < than if metric in HIGHER_IS_BETTER else value > than


def evaluate(model_dir: str, examples: Artifact, props: dict) -> tuple[str, dict]:
    """(family, metrics) of an export: the family's metric on the eval split."""
    metadata = export.read_metadata(model_dir)
    family, mode = metadata["family"], metadata["spec"]["mode"]
    given = props.get("binarization")
    check(
        given in (None, mode),
        f"evaluator binarization={given!r}, but the model at {model_dir} was trained on "
        f"{mode!r}; leave it out (the export's mode is used)",
    )
    check(family in METRICS, f"no Evaluator metric for family {family!r} ({', '.join(METRICS)})")
    seed = props.get("binarization_seed", DataConfig.binarization_seed)
    return family, METRICS[family][0](model_dir, examples, {**props, "mode": mode, "seed": seed})


def evaluator(inputs: dict, props: dict, out: str) -> dict:
    """inputs: examples, model[, baseline][, classifier]; props: eval_examples,
    binarization_seed, thresholds {metric: bound}, fid_samples.

    Scores the model with its family's metric (`METRICS`): NLL for likelihood models
    (IWAE and ELBO too for the VAE), accuracy for the classifier, reconstruction error for
    the autoencoder, FID/KID on the classifier input's features for the GAN. Blesses it if
    every threshold holds (an upper bound for lower-is-better metrics, a lower bound for
    `HIGHER_IS_BETTER` ones) and its decisive metric is no worse than the pushed version's.
    """
    examples, model = inputs["examples"], inputs["model"]
    family = export.read_metadata(model.uri)["family"]
    props = dict(props)
    if family in NEEDS_CLASSIFIER:
        check(
            "classifier" in inputs,
            f"the {family} Evaluator scores FID/KID on a classifier's features: give it a "
            "classifier input (trainers.pipeline --classifier=<classifier export or run dir>)",
        )
        props["classifier"] = inputs["classifier"].uri
    family, values = evaluate(model.uri, examples, props)
    metric = METRICS[family][1]
    reasons = []
    for name, bound in props.get("thresholds", {}).items():
        check(
            name in values and isinstance(values[name], (int, float)),
            f"threshold on {name!r}: the {family} Evaluator reports "
            f"{', '.join(k for k, v in values.items() if isinstance(v, (int, float)))}",
        )
        if worse(name, values[name], bound):
            side = "<" if name in HIGHER_IS_BETTER else ">"
            reasons.append(f"{name}={values[name]:.4f} {side} threshold {bound}")
    baseline = inputs.get("baseline")
    if baseline is not None and baseline.properties.get("pushed"):
        _, base = evaluate(baseline.uri, examples, props)
        if metric in base:
            values["baseline_" + metric] = base[metric]
            if worse(metric, values[metric], base[metric]):
                reasons.append(
                    f"{metric}={values[metric]:.4f} is worse than the pushed version "
                    f"{baseline.properties.get('version')} ({base[metric]:.4f})"
                )
    blessed = not reasons
    path = os.path.join(out, "metrics.json")
    with open(path, "w") as f:
        json.dump(values, f, indent=2)
    blessing = {
        "blessed": blessed,
        "reason": "; ".join(reasons) or "meets every threshold",
        "metric": metric,
    }
    with open(os.path.join(out, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(blessing["reason"] + "\n")
    return {
        "evaluation": Artifact("ModelEvaluation", path, values),
        "blessing": Artifact("ModelBlessing", out, blessing),
    }


def pusher(inputs: dict, props: dict, out: str) -> dict:
    """props: export_dir, model_name. Pushes only a blessed model."""
    del out
    blessing = inputs["blessing"]
    if not blessing.properties["blessed"]:
        return {
            "pushed_model": Artifact(
                "PushedModel",
                "",
                {"pushed": False, "reason": f"not blessed: {blessing.properties['reason']}"},
            )
        }
    path = export.push(inputs["model"].uri, props["export_dir"], props["model_name"])
    return {
        "pushed_model": Artifact(
            "PushedModel",
            path,
            {
                "pushed": True,
                "version": int(os.path.basename(path)),
                "model_name": props["model_name"],
                "source_model_id": inputs["model"].id,
            },
        )
    }
