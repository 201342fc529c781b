"""Runs components with metadata and caching, and the whole chain for one model family.

pipeline_root/
  metadata.sqlite                      executions, artifacts, events (lineage)
  <component>/<execution id>/          each execution's outputs
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

from gen_keras import models
from gen_keras.config import DataConfig, TrainConfig, check
from gen_keras.config import preset as preset_config
from gen_keras.pipeline import components
from gen_keras.pipeline.metadata import Artifact, MetadataStore


@dataclasses.dataclass
class Step:
    """One component's result in a pipeline run."""

    component: str
    execution_id: int
    outputs: dict[str, Artifact]
    cached: bool


def cache_key(component: str, inputs: dict[str, Artifact], props: dict) -> str:
    identity = {
        "component": component,
        "properties": props,
        "inputs": {k: [a.type, a.id] for k, a in sorted(inputs.items())},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _outputs_exist(outputs: dict[str, Artifact]) -> bool:
    return all(not a.uri or os.path.exists(a.uri) for a in outputs.values())


def run_component(
    store: MetadataStore,
    root: str,
    name: str,
    fn,
    inputs: dict,
    props: dict,
    use_cache: bool = True,
) -> Step:
    """Runs fn(inputs, props, output_dir) once per distinct (inputs, props), recorded in store.

    A failed execution is recorded as failed and leaves no output artifacts.
    """
    inputs = {k: v for k, v in inputs.items() if v is not None}
    key = cache_key(name, inputs, props)
    hit = store.cached(key) if use_cache else None
    if hit and _outputs_exist(hit[1]):
        return Step(name, hit[0], hit[1], cached=True)
    execution_id = store.start(name, props, key)
    out = os.path.join(root, name, str(execution_id))
    os.makedirs(out)
    try:
        outputs = fn(inputs, props, out)
    except BaseException:
        store.fail(execution_id)
        shutil.rmtree(out, ignore_errors=True)
        raise
    store.finish(execution_id, inputs, outputs)
    return Step(name, execution_id, outputs, cached=False)


def latest_pushed(store: MetadataStore, model_name: str) -> Artifact | None:
    """The newest PushedModel artifact that was pushed for model_name (the serving baseline)."""
    pushed = [
        a
        for a in store.artifacts("PushedModel")
        if a.properties.get("pushed")
        and a.properties.get("model_name") == model_name
        and os.path.exists(a.uri)
    ]
    return pushed[-1] if pushed else None


def run_pipeline(
    root: str,
    *,
    data: dict,
    trainer: dict,
    evaluator: dict,
    pusher: dict,
    classifier: str | dict | None = None,
    use_cache: bool = True,
) -> list[Step]:
    """ExampleGen -> Trainer -> Evaluator -> Pusher; returns the steps in execution order
    (the Evaluator and the Pusher last).

    data/trainer/evaluator/pusher are the components' execution properties. A family scored
    on a classifier's features (the GAN's FID/KID) needs `classifier`: the path of a
    classifier export or run directory (imported), or the Trainer properties of a
    classifier to train first on the same Examples.
    """
    os.makedirs(root, exist_ok=True)
    store = MetadataStore(os.path.join(root, "metadata.sqlite"))
    try:
        run = lambda name, fn, inputs, props: run_component(  # noqa: E731
            store, root, name, fn, inputs, props, use_cache
        )
        gen = run("ExampleGen", components.example_gen, {}, data)
        examples = gen.outputs["examples"]
        steps = [gen]
        features = None
        if trainer.get("custom_config", {}).get("family") in components.NEEDS_CLASSIFIER:
            family = trainer["custom_config"]["family"]
            check(
                classifier is not None,
                f"the {family} Evaluator scores FID/KID on a classifier's features: pass "
                "--classifier=<classifier export or run dir>, or leave it empty to train one",
            )
            if isinstance(classifier, str):
                step = run(
                    "Importer", components.importer, {}, {"uri": classifier, "type": "Model"}
                )
                features = step.outputs["result"]
            else:
                step = run("Trainer", components.trainer, {"examples": examples}, classifier)
                features = step.outputs["model"]
            steps.append(step)
        trained = run("Trainer", components.trainer, {"examples": examples}, trainer)
        model = trained.outputs["model"]
        baseline = latest_pushed(store, pusher["model_name"])
        if baseline is not None and baseline.properties.get("source_model_id") == model.id:
            baseline = None  # this very model is serving: nothing to compare, nothing to push
        evaluated = run(
            "Evaluator",
            components.evaluator,
            {"examples": examples, "model": model, "baseline": baseline, "classifier": features},
            evaluator,
        )
        pushed = run(
            "Pusher",
            components.pusher,
            {"model": model, "blessing": evaluated.outputs["blessing"]},
            pusher,
        )
        return [*steps, trained, evaluated, pushed]
    finally:
        store.close()


def run_family(
    root: str,
    family: str,
    *,
    data: DataConfig,
    train: TrainConfig,
    preset: str = "small",
    model: dict | None = None,
    eval_examples: int | None = None,
    thresholds: dict | None = None,
    classifier: str | TrainConfig | None = None,
    use_cache: bool = True,
) -> list[Step]:
    """The whole chain for one family from config values (what `trainers.pipeline` runs).

    train: the Trainer's TrainConfig (epochs x steps_per_epoch steps, or epochs passes when
    steps_per_epoch is None; its export_dir is the Pusher's; model_dir is the pipeline's).
    model: Config fields over `preset`. classifier (a GAN's FID/KID features): a classifier
    export or run directory, or the TrainConfig of a default-preset classifier trained on
    the same Examples and binarization first.
    """
    fields = dict(model or {})
    config = dataclasses.replace(preset_config(models.get(family), preset, **fields), **fields)
    if isinstance(classifier, TrainConfig):
        classifier = {
            "train_steps": _steps(classifier),
            "custom_config": {
                "family": "classifier",
                "preset": "default",
                "binarization": data.binarization,
                "binarization_seed": data.binarization_seed,
                "train": _train_fields(classifier),
            },
        }
    fid_samples = getattr(config, "final_samples", None)  # the GAN's end-of-run sample count
    return run_pipeline(
        root,
        data={
            "dataset": data.dataset,
            "data_dir": data.data_dir,
            "manual_dir": data.manual_dir,
            "download": data.download,
            "train_split": data.train_split,
            "eval_split": data.eval_split,
        },
        trainer={
            "train_steps": _steps(train),
            "eval_steps": train.eval_steps,
            "custom_config": {
                "family": family,
                "preset": preset,
                "model": fields,
                "binarization": data.binarization,
                "binarization_seed": data.binarization_seed,
                "train": _train_fields(train),
            },
        },
        evaluator={
            "binarization_seed": data.binarization_seed,
            "eval_examples": eval_examples,
            "thresholds": thresholds or {},
            **({"fid_samples": fid_samples} if fid_samples else {}),
        },
        pusher={"export_dir": train.export_dir, "model_name": family},
        classifier=classifier,
        use_cache=use_cache,
    )


def _steps(train: TrainConfig) -> int | None:
    return train.epochs * train.steps_per_epoch if train.steps_per_epoch else None


def _train_fields(train: TrainConfig) -> dict:
    """The TrainConfig fields a Trainer takes (the pipeline owns directories and export)."""
    skip = ("model_dir", "export_dir", "export", "eval_steps")
    return {k: v for k, v in dataclasses.asdict(train).items() if k not in skip}
