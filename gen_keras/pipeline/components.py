"""The four components. Each is `fn(inputs, properties, output_dir) -> outputs`, where
inputs and outputs are {name: Artifact}; `runner.run_component` records and caches them.

- example_gen: TFDS split -> gzipped tf.Example TFRecords in TFX's layout
  (`Split-train/`, `Split-eval/`) plus statistics (counts, pixel mean/std, labels).
- trainer: imports `module` and calls its `run_fn(FnArgs(...))`.
- evaluator: the family's metric on the eval split (NLL in nats and bits/dim for
  likelihood models; FID for samplers, given a classifier export); blesses a model that
  meets the thresholds and is no worse than the currently pushed version.
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

from gen_keras import export, scoring
from gen_keras.config import DataConfig, UsageError, check, from_dict
from gen_keras.data import load_raw, tfrecord_source, to_example
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
    """props: module, train_steps, eval_steps, custom_config (family, model, train, ...)."""
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
        train_steps=int(props["train_steps"]),
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


def _eval_batches(examples: Artifact, limit: int | None, batch: int = 256):
    shape, num_classes = examples.properties["image_shape"], examples.properties["num_classes"]
    ds, _, _, _ = tfrecord_source(
        _split_files(examples, "eval"),
        shape,
        num_classes,
        num_examples=examples.properties["counts"]["eval"],
    )
    if limit:
        ds = ds.take(limit)
    return ds.batch(batch)


def nll(model_dir: str, examples: Artifact, binarization: str, limit: int | None) -> dict:
    """Mean negative log-likelihood (nats per image, bits/dim) via the `log_prob` signature.

    Scores with `gen_keras.scoring.log_prob`, so two models see the same binarization and
    noise for each image, and the Beam scoring job gives the same numbers.
    """
    signature = tf.saved_model.load(model_dir).signatures["log_prob"]
    total, count, dims = 0.0, 0, int(np.prod(examples.properties["image_shape"]))
    for batch in _eval_batches(examples, limit):
        images, labels = batch["image"].numpy(), batch["label"].numpy()
        total += float(scoring.log_prob(signature, images, binarization, labels).sum())
        count += len(images)
    nats = -total / count
    return {
        "nll_nats": nats,
        "nll_bits_per_dim": nats / (dims * math.log(2)),
        "eval_examples": count,
    }


def evaluator(inputs: dict, props: dict, out: str) -> dict:
    """props: binarization, eval_examples, thresholds {metric: max}; metric nll_nats."""
    examples, model = inputs["examples"], inputs["model"]
    metric = props.get("metric", "nll_nats")
    if metric != "nll_nats":
        raise UsageError(f"evaluator metric={metric!r} is not supported (nll_nats)")
    evaluate = lambda uri: nll(
        uri,
        examples,
        props.get("binarization", "binary_static"),  # noqa: E731
        props.get("eval_examples"),
    )
    metrics = evaluate(model.uri)
    reasons = [
        f"{name}={metrics[name]:.4f} > threshold {limit}"
        for name, limit in props.get("thresholds", {}).items()
        if metrics[name] > limit
    ]
    baseline = inputs.get("baseline")
    if baseline is not None and baseline.properties.get("pushed"):
        base = evaluate(baseline.uri)
        metrics["baseline_" + metric] = base[metric]
        if metrics[metric] > base[metric]:
            reasons.append(
                f"{metric}={metrics[metric]:.4f} is worse than the pushed version "
                f"{baseline.properties.get('version')} ({base[metric]:.4f})"
            )
    blessed = not reasons
    path = os.path.join(out, "metrics.json")
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    blessing = {"blessed": blessed, "reason": "; ".join(reasons) or "meets every threshold"}
    with open(os.path.join(out, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(blessing["reason"] + "\n")
    return {
        "evaluation": Artifact("ModelEvaluation", path, metrics),
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
