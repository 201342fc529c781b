"""TFX-style pipeline: metadata store, each component alone, run_fn with TFX's FnArgs
names, blessing against the serving version, interrupted pushes, caching, lineage; every
family through the pipeline; the harness's, the Evaluator's and Beam's NLL agree."""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import types

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from gen_keras import beam_inference, export
from gen_keras import data as data_lib
from gen_keras.config import UsageError
from gen_keras.data import tfrecord_source
from gen_keras.pipeline import components, runner, trainer_module
from gen_keras.pipeline.fn_args import FnArgs
from gen_keras.pipeline.metadata import Artifact, MetadataStore
from tests.conftest import REPO

# tfx.components.FnArgs (TFX 1.x) fields, as a real Trainer passes them
TFX_FN_ARGS = {
    "working_dir",
    "train_files",
    "eval_files",
    "train_steps",
    "eval_steps",
    "schema_path",
    "schema_file",
    "transform_graph_path",
    "transform_output",
    "data_accessor",
    "serving_model_dir",
    "eval_model_dir",
    "model_run_dir",
    "base_model",
    "hyperparameters",
    "custom_config",
}
CUSTOM = {
    "family": "vae",
    "preset": "small",
    "binarization": "binary_static",
    "train": {"batch_size": 32, "learning_rate": 3e-3},
}


SLICES = {"train_split": "train[:300]", "eval_split": "test[:100]", "download": False}


@pytest.fixture(scope="module")
def examples(mnist_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("examples"))
    return components.example_gen({}, {"dataset": "mnist", "data_dir": mnist_dir, **SLICES}, out)


def test_metadata_store_records_lineage_and_cache_keys(tmp_path):
    store = MetadataStore(str(tmp_path / "m.sqlite"))
    a = store.start("A", {"x": 1}, "key-a")
    store.finish(a, {}, {"out": Artifact("Examples", "/e", {"n": 3})})
    examples = store.outputs(a)["out"]
    b = store.start("B", {}, "key-b")
    store.finish(b, {"examples": examples}, {"model": Artifact("Model", "/m")})
    c = store.start("C", {}, "key-c")
    store.fail(c)
    model = store.outputs(b)["model"]
    assert [(comp, art.type) for comp, art in store.lineage(model.id)] == [("A", "Examples")]
    assert store.cached("key-b")[1]["model"].uri == "/m"
    assert store.cached("key-c") is None  # failed executions are never reused
    assert [e.state for e in store.executions()] == ["complete", "complete", "failed"]
    assert store.artifact(examples.id).properties == {"n": 3}


def test_example_gen_writes_tfx_layout_and_statistics(examples, mnist_dir):
    ex, stats = examples["examples"], examples["statistics"]
    assert sorted(os.listdir(ex.uri)) == ["Split-eval", "Split-train", "statistics.json"]
    assert ex.properties["counts"] == {"train": 300, "eval": 100}
    assert ex.properties["image_shape"] == [28, 28, 1] and ex.properties["num_classes"] == 10
    raw = tfds.load("mnist", split="test[:100]", data_dir=mnist_dir, download=False, batch_size=-1)
    pixels = raw["image"].numpy().astype(np.float64)
    assert stats.properties["eval"]["pixel_mean"] == pytest.approx(pixels.mean(), rel=1e-9)
    assert sum(stats.properties["eval"]["label_counts"]) == 100
    ds, n, shape, _ = tfrecord_source(components._split_files(ex, "eval"), [28, 28, 1], 10)
    back = next(iter(ds.batch(100)))
    assert n == 100 and shape == (28, 28, 1)
    np.testing.assert_array_equal(back["image"].numpy(), raw["image"].numpy())
    np.testing.assert_array_equal(back["label"].numpy(), raw["label"].numpy())


def test_fn_args_carries_tfx_field_names():
    assert {f.name for f in dataclasses.fields(FnArgs)} == TFX_FN_ARGS


def test_schedule_trains_exactly_train_steps():
    for steps, full in ((10, 100), (12, 5), (7, 3), (1, 1)):
        epochs, per_epoch = trainer_module.schedule(steps, full)
        assert epochs * per_epoch == steps
    assert trainer_module.schedule(12, 5) == (3, 4)


def _run_fn(examples, tmp_path, steps):
    ex = examples["examples"]
    args = types.SimpleNamespace(**{name: None for name in TFX_FN_ARGS})  # as TFX passes it
    args.train_files = components._split_files(ex, "train")
    args.eval_files = components._split_files(ex, "eval")
    args.train_steps, args.eval_steps = steps, 2
    args.serving_model_dir = str(tmp_path / "Format-Serving")
    args.model_run_dir = str(tmp_path / "run")
    args.custom_config = {**CUSTOM, "image_shape": [28, 28, 1], "num_classes": 10}
    trainer_module.run_fn(args)
    return args


@pytest.fixture(scope="module")
def one_step_vae(examples, tmp_path_factory):
    """The serving dir of a VAE trained for one step by run_fn (a bad model, cheap to make)."""
    return _run_fn(examples, tmp_path_factory.mktemp("one_step"), steps=1).serving_model_dir


def test_run_fn_trains_exactly_train_steps_and_writes_a_servable_model(examples, tmp_path):
    args = _run_fn(examples, tmp_path, steps=7)
    latest = tf.train.latest_checkpoint(os.path.join(args.model_run_dir, "checkpoints"))
    assert latest.endswith("ckpt-7")
    loaded = tf.saved_model.load(args.serving_model_dir)
    assert {"sample", "log_prob", "serving_default"} <= set(loaded.signatures)


def test_evaluator_blesses_by_threshold_and_refuses_a_worse_model(examples, one_step_vae, tmp_path):
    good = _run_fn(examples, tmp_path / "good", steps=30).serving_model_dir
    bad = one_step_vae
    ex = examples["examples"]
    props = {"binarization": "binary_static", "eval_examples": 100}
    baseline = Artifact("PushedModel", good, {"pushed": True, "version": 3})
    (tmp_path / "e1").mkdir()
    refused = components.evaluator(
        {"examples": ex, "model": Artifact("Model", bad), "baseline": baseline},
        props,
        str(tmp_path / "e1"),
    )
    blessing = refused["blessing"].properties
    assert not blessing["blessed"] and "worse than the pushed version 3" in blessing["reason"]
    metrics = refused["evaluation"].properties
    assert metrics["nll_nats"] > metrics["baseline_nll_nats"]
    assert os.path.exists(tmp_path / "e1" / "NOT_BLESSED")
    (tmp_path / "e2").mkdir()
    strict = components.evaluator(
        {"examples": ex, "model": Artifact("Model", good)},
        {**props, "thresholds": {"nll_nats": 10.0}},
        str(tmp_path / "e2"),
    )
    assert "nll_nats=" in strict["blessing"].properties["reason"]
    assert not strict["blessing"].properties["blessed"]


def test_an_interrupted_push_leaves_the_previous_version_serving(
    one_step_vae, tmp_path, monkeypatch
):
    model_dir = one_step_vae
    root = str(tmp_path / "saved_models")
    blessed = Artifact("ModelBlessing", "", {"blessed": True, "reason": "ok"})
    inputs = {"model": Artifact("Model", model_dir, id=1), "blessing": blessed}
    first = components.pusher(inputs, {"export_dir": root, "model_name": "vae"}, "")
    assert first["pushed_model"].properties["version"] == 1

    def broken_copy(src, dst, **kw):
        os.makedirs(dst)
        open(os.path.join(dst, "saved_model.pb"), "w").close()  # half a model
        raise OSError("disk full")

    monkeypatch.setattr(export.shutil, "copytree", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        components.pusher(inputs, {"export_dir": root, "model_name": "vae"}, "")
    assert sorted(os.listdir(os.path.join(root, "vae"))) == ["1"]
    with open(os.path.join(root, "models.config")) as f:
        assert '"/models/vae"' in f.read()
    unblessed = components.pusher(
        {
            **inputs,
            "blessing": Artifact("ModelBlessing", "", {"blessed": False, "reason": "too high"}),
        },
        {"export_dir": root, "model_name": "vae"},
        "",
    )
    assert unblessed["pushed_model"].properties == {
        "pushed": False,
        "reason": "not blessed: too high",
    }


def test_the_whole_chain_on_mock_data_caches_and_records_lineage(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(data_lib, "network_available", lambda *a, **k: True)
    props = dict(
        data={
            "dataset": "mnist",
            "data_dir": mnist_dir,
            "train_split": "train",
            "eval_split": "test",
        },
        trainer={"train_steps": 4, "eval_steps": 1, "custom_config": CUSTOM},
        evaluator={"binarization": "binary_static", "eval_examples": 64},
        pusher={"export_dir": str(tmp_path / "saved_models"), "model_name": "vae"},
    )
    with tfds.testing.mock_data(num_examples=96, max_value=60):
        first = runner.run_pipeline(str(tmp_path / "root"), **props)
        second = runner.run_pipeline(str(tmp_path / "root"), **props)
    assert [s.cached for s in first] == [False] * 4
    assert [s.cached for s in second] == [True] * 4
    pushed = first[3].outputs["pushed_model"]
    assert pushed.properties["pushed"] and pushed.uri.endswith("saved_models/vae/1")
    assert os.listdir(tmp_path / "saved_models" / "vae") == ["1"]
    store = MetadataStore(str(tmp_path / "root" / "metadata.sqlite"))
    try:
        parents = {(comp, art.type) for comp, art in store.lineage(pushed.id)}
        execution, inputs = store.producer(pushed.id)
    finally:
        store.close()
    assert {
        ("Trainer", "Model"),
        ("Evaluator", "ModelBlessing"),
        ("ExampleGen", "Examples"),
    } <= parents
    assert execution.component == "Pusher" and set(inputs) == {"model", "blessing"}
    evaluation = json.load(open(first[2].outputs["evaluation"].uri))
    assert evaluation["eval_examples"] == 64 and evaluation["nll_nats"] > 0
    assert evaluation["nll_nats"] == -evaluation["iwae"]  # the VAE: its IWAE bound, and ELBO
    assert evaluation["elbo"] < 0 and evaluation["iwae"] < 0


# -- every family through the pipeline: tiny presets, a few steps, 48 eval images ----------

FEATURES = {  # the classifier Trainer of the GAN's Evaluator (and the classifier test's)
    "train_steps": 8,
    "eval_steps": 1,
    "custom_config": {
        "family": "classifier",
        "preset": "small",
        "binarization": "float_symmetric",
        "train": {"batch_size": 32, "learning_rate": 3e-3},
    },
}


FAMILY_SLICES = {"train_split": "train[:160]", "eval_split": "test[:48]", "download": False}


@pytest.fixture(scope="module")
def family_root(tmp_path_factory):
    """One pipeline root for the family tests: ExampleGen (and shared Trainers) run once."""
    return str(tmp_path_factory.mktemp("families"))


def _family(root, mnist_dir, tmp_path, trainer, evaluator=None, **kw):
    steps = runner.run_pipeline(
        root,
        data={"dataset": "mnist", "data_dir": mnist_dir, **FAMILY_SLICES},
        trainer=trainer,
        evaluator=evaluator or {},
        pusher={
            "export_dir": str(tmp_path / "saved_models"),
            "model_name": trainer["custom_config"]["family"],
        },
        **kw,
    )
    blessing = steps[-2].outputs["blessing"].properties
    pushed = steps[-1].outputs["pushed_model"]
    assert blessing["blessed"], blessing
    assert pushed.properties["pushed"] and pushed.properties["version"] == 1
    assert os.path.isfile(os.path.join(pushed.uri, "saved_model.pb"))
    return steps, steps[-2].outputs["evaluation"].properties


def _tiny(family, mode="binary_static", steps=3, **model):
    return {
        "train_steps": steps,
        "eval_steps": 1,
        "custom_config": {
            "family": family,
            "preset": "small",
            "model": model,
            "binarization": mode,
            "train": {"batch_size": 16, "learning_rate": 3e-3},
        },
    }


def test_pixelcnn_is_pushed_and_the_harness_evaluator_and_beam_nlls_agree(
    family_root, mnist_dir, tmp_path
):
    steps, metrics = _family(family_root, mnist_dir, tmp_path, _tiny("pixelcnn"))
    trained = steps[-3].outputs
    with open(os.path.join(trained["model_run"].uri, "metrics.json")) as f:
        harness = json.load(f)["final"]
    examples = steps[0].outputs["examples"]
    out = str(tmp_path / "beam")
    with beam.Pipeline() as p:
        images = beam_inference.read_tfrecords(
            p, components._split_files(examples, "eval"), [28, 28, 1]
        )
        beam_inference.score(images, trained["model"].uri, out, mode="binary_static")
    with open(os.path.join(out, "summary.json")) as f:
        beam_summary = json.load(f)
    assert harness["eval_examples"] == metrics["eval_examples"] == beam_summary["count"] == 48
    assert 100 < metrics["nll_nats"] < 600  # a barely trained model: above any good one
    assert harness["nll_nats"] == pytest.approx(metrics["nll_nats"], rel=1e-5)
    assert beam_summary["mean_nll_nats"] == pytest.approx(metrics["nll_nats"], rel=1e-5)
    assert metrics["nll_bits_per_dim"] == pytest.approx(harness["nll_bits_per_dim"], rel=1e-5)


def test_pixelrnn_is_pushed_with_its_nll(family_root, mnist_dir, tmp_path):
    _, metrics = _family(
        family_root, mnist_dir, tmp_path, _tiny("pixelrnn", steps=2), {"eval_examples": 24}
    )
    assert metrics["eval_examples"] == 24
    assert metrics["nll_bits_per_dim"] == pytest.approx(
        metrics["nll_nats"] / (784 * np.log(2)), rel=1e-9
    )
    assert 100 < metrics["nll_nats"] < 600


def test_classifier_is_pushed_and_thresholds_are_direction_aware(family_root, mnist_dir, tmp_path):
    steps, metrics = _family(family_root, mnist_dir, tmp_path, FEATURES)
    assert metrics["eval_examples"] == 48 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["errors"] == round(48 * (1 - metrics["accuracy"]))
    inputs = {"examples": steps[0].outputs["examples"], "model": steps[-3].outputs["model"]}
    reasons = []
    for bound, blessed in ((metrics["accuracy"] + 0.01, False), (metrics["accuracy"], True)):
        out = tmp_path / f"eval-{blessed}"
        out.mkdir()
        result = components.evaluator(inputs, {"thresholds": {"accuracy": bound}}, str(out))
        assert result["blessing"].properties["blessed"] is blessed  # accuracy: higher is better
        reasons.append(result["blessing"].properties["reason"])
    assert reasons[0].startswith("accuracy=") and "< threshold" in reasons[0]
    with pytest.raises(UsageError, match="reports accuracy, errors"):
        components.evaluator(inputs, {"thresholds": {"nll_nats": 1.0}}, str(tmp_path))
    assert components.worse("nll_nats", 90.0, 80.0) and not components.worse("fid", 1.0, 2.0)


def test_gan_is_pushed_with_fid_and_kid_on_a_classifier_trained_first(
    family_root, mnist_dir, tmp_path
):
    trainer = _tiny("gan", mode="float_symmetric", final_samples=60)
    with pytest.raises(UsageError, match="--classifier="):
        _family(family_root, mnist_dir, tmp_path, trainer)
    steps, metrics = _family(
        family_root,
        mnist_dir,
        tmp_path,
        trainer,
        {"fid_samples": 60},
        classifier=FEATURES,
    )
    assert [s.component for s in steps] == [
        "ExampleGen",
        "Trainer",
        "Trainer",
        "Evaluator",
        "Pusher",
    ]
    assert metrics["classifier"] == steps[1].outputs["model"].uri
    assert metrics["samples"] == 60 and metrics["eval_examples"] == 48
    assert metrics["fid"] > 0 and metrics["kid_stderr"] >= 0


def test_autoencoder_from_the_command_line_with_the_shared_flags(mnist_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.pipeline",
            "--model=autoencoder",
            "--config=small",
            "--latent_dim=3",
            f"--data_dir={mnist_dir}",
            "--nodownload",
            "--train_split=train[:96]",
            "--eval_split=test[:40]",
            "--epochs=2",
            "--steps_per_epoch=2",
            "--batch_size=16",
            "--eval_steps=1",
            "--threshold=reconstruction_mse=0.9",
            f"--pipeline_root={tmp_path}/root",
            f"--export_dir={tmp_path}/saved_models",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "blessed: True" in result.stdout and "pushed: version 1" in result.stdout
    (evaluation,) = glob.glob(str(tmp_path / "root" / "Evaluator" / "*" / "metrics.json"))
    metrics = json.load(open(evaluation))
    assert metrics["eval_examples"] == 40 and 0 < metrics["reconstruction_mse"] < 0.9
    checkpoints = tf.train.latest_checkpoint(
        glob.glob(str(tmp_path / "root" / "Trainer" / "*" / "run" / "checkpoints"))[0]
    )
    assert checkpoints.endswith("ckpt-4")  # --epochs=2 x --steps_per_epoch=2
    record = json.load(
        open(glob.glob(str(tmp_path / "root" / "Trainer" / "*" / "run" / "config.json"))[0])
    )
    assert record["model"]["latent_dim"] == 3
