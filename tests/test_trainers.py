"""Entry points: usage errors exit 2 with one line and write nothing, offline data errors,
IDX runs, --help; every trainer's flags derive from the Config dataclasses."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from gen_keras import models
from gen_keras.config import DataConfig, TrainConfig
from gen_keras.models import pixelcnn
from tests.conftest import REPO


def _run(*args, timeout=300, family="vae", env=None):
    return subprocess.run(
        [sys.executable, "-m", f"trainers.{family}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def _one_line_error(result, text):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and text in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, text",
    [
        (["--binarization=gray"], "binarization"),
        (["--no_such_flag=1"], "no_such_flag"),
        (["--batch_size=0"], "batch_size=0 must be > 0"),
        (["--epochs=-1"], "epochs=-1 must be > 0"),
        (["--likelihood=categorical"], "does not fit binarization='binary_static'"),
        (["--learning_rate=inf"], "learning_rate=inf must be a finite number"),
        (["--learning_rate=nan"], "learning_rate=nan must be a finite number"),
        (["--eval_split=test[:0]"], "split='test[:0]' of 'mnist' is empty"),
        (["--allow_config_change=epochs"], "allow_config_change='epochs' is not one of"),
        (["--precision=bfloat16"], "precision='bfloat16' casts the convolutions of pixelcnn"),
        (["--precision=float16"], "precision"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_write_nothing(args, text, tmp_path):
    _one_line_error(_run(*args, f"--model_dir={tmp_path}/run", "--nodownload"), text)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["notjson", "[1, 2]"])
def test_a_garbled_tf_config_exits_2_with_one_line(value, tmp_path):
    result = _run(f"--model_dir={tmp_path}/run", "--nodownload", env={"TF_CONFIG": value})
    _one_line_error(result, f"TF_CONFIG={value!r}")
    assert not (tmp_path / "run").exists()


def test_a_bad_classifier_path_exits_2_and_writes_nothing(tmp_path):
    """The classifier is loaded before the run writes its record (it used to write
    config.json first, and the corrected command was then refused as another config)."""
    args = [
        "--config=small",
        "--train_split=train[:64]",
        "--eval_split=test[:32]",
        "--nodownload",
        f"--model_dir={tmp_path}/run",
    ]
    result = _run(*args, "--classifier=/nonexistent", family="gan")
    _one_line_error(result, "classifier='/nonexistent' is neither a classifier export")
    assert not (tmp_path / "run").exists()


def test_missing_dataset_offline_is_one_clear_line(tmp_path):
    result = _run(
        "--dataset=fashion_mnist",
        f"--data_dir={tmp_path}/tfds",
        "--nodownload",
        f"--model_dir={tmp_path}/run",
    )
    _one_line_error(result, "dataset 'fashion_mnist' is not prepared in")
    assert f"{tmp_path}/tfds" in result.stderr


def test_manual_dir_run_trains_from_idx_files(mnist_idx_dir, tmp_path):
    result = _run(
        "--config=small",
        f"--manual_dir={mnist_idx_dir}",
        "--train_split=train[:256]",
        "--eval_split=test[:64]",
        "--batch_size=32",
        "--epochs=1",
        "--steps_per_epoch=4",
        "--noexport",
        f"--model_dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final: elbo=" in result.stdout and "iwae_8=" in result.stdout


def test_help_lists_the_shared_and_model_flags():
    result = _run("--helpfull")  # absl's help exits 1 after printing
    assert "Traceback" not in result.stderr
    for flag in (
        "--dataset",
        "--binarization",
        "--jit_compile",
        "--strategy",
        "--latent_dim",
        "--train_k",
        "--checkpoint_every_steps",
    ):
        assert flag in result.stdout


def test_config_help_names_what_each_preset_sets():
    """The flags show Config()'s defaults; --config's help names what each preset changes, so
    `--config=reproduce` alone is not read as a Row LSTM (its preset builds a Diagonal BiLSTM)."""
    from gen_keras.models import pixelrnn, vae
    from trainers.common import preset_values

    assert preset_values(pixelrnn) == (
        "What each preset sets over the flags' defaults (a given flag wins): default: none; "
        "small: layers=2, hidden=6, output_hidden=12; reproduce: arch=diagonal_bilstm, layers=7."
    )
    for name in ("small", "reproduce"):  # every named value is the preset's, none is Config()'s
        config, base = dataclasses.asdict(getattr(vae, name)()), dataclasses.asdict(vae.Config())
        part = preset_values(vae).split(f"; {name}: ")[1].split(";")[0].rstrip(".")
        named = dict(item.split("=", 1) for item in part.split(", "))
        assert named == {k: str(v) for k, v in config.items() if v != base[k]}


# Imports every trainer in one process (each defines its flags on absl's global FLAGS, so
# the next one starts after removing them) and prints {module: {flag: [type, choices]}},
# plus the Config a preset with one given flag resolves to.
_FLAG_SURVEY = """
import dataclasses, importlib, json
from absl import flags
from trainers import common
from gen_keras.models import pixelcnn
FLAGS, out = flags.FLAGS, {}
for name in ("vae", "autoencoder", "classifier", "gan", "pixelcnn", "pixelrnn", "semisupervised",
             "pipeline"):
    before = set(FLAGS)
    importlib.import_module("trainers." + name)
    out[name] = {
        f: [type(FLAGS[f]).__name__, list(getattr(FLAGS[f].parser, "enum_values", []) or [])]
        for f in set(FLAGS) - before
    }
    if name == "pixelcnn":
        FLAGS(["pixelcnn", "--config=small", "--layers=3"])
        out["preset"] = dataclasses.asdict(common.model_config(pixelcnn))
        FLAGS.unparse_flags()
    for f in set(FLAGS) - before:
        delattr(FLAGS, f)
print(json.dumps(out))
"""


PIPELINE_FAMILIES = tuple(f for f in models.FAMILIES if f != "semisupervised")


def test_every_trainer_has_a_flag_per_config_field_and_the_shared_flags():
    result = subprocess.run(
        [sys.executable, "-c", _FLAG_SURVEY], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    survey = json.loads(result.stdout.strip().splitlines()[-1])
    shared = [f for cls in (DataConfig, TrainConfig) for f in dataclasses.fields(cls)]
    for trainer in (*models.FAMILIES, "pipeline"):
        defined = survey[trainer]
        families = PIPELINE_FAMILIES if trainer == "pipeline" else (trainer,)
        fields = [f for family in families for f in dataclasses.fields(models.get(family).Config)]
        for field in shared + fields:
            assert field.name in defined, (trainer, field.name)
            choices = [str(c) for c in field.metadata["choices"]]
            assert set(choices) <= set(defined[field.name][1]), (trainer, field.name)
            assert (defined[field.name][0] == "EnumFlag") == bool(choices)
        assert "config" in defined
    # --config=small supplies the defaults; a flag given on the command line overrides
    assert survey["preset"] == dataclasses.asdict(dataclasses.replace(pixelcnn.small(), layers=3))
    assert survey["pixelcnn"]["arch"] == ["EnumFlag", list(pixelcnn.ARCHS)]
