"""The harness: run layout, TensorBoard events read back, resume, kill -9, NaN stop, XLA."""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import weakref

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

from gen_keras import averaging as averaged
from gen_keras import checkpoints, runs, train
from gen_keras.config import DataConfig, TrainConfig, UsageError
from gen_keras.data import DataSpec, ImageData
from gen_keras.models import pixelcnn, vae
from gen_keras.models.base import dummy_batch
from tests.conftest import REPO, small_data, small_train

METRICS = ["loss", "elbo", "distortion", "rate", "bits_per_dim"]


def _events(logdir):
    acc = ea.EventAccumulator(logdir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}, acc


def test_run_directory_layout(vae_run):
    d = vae_run.model_dir
    assert vae_run.step == 12
    record = json.load(open(os.path.join(d, "config.json")))
    assert record["family"] == "vae" and record["spec"]["shape"] == [28, 28, 1]
    assert tf.train.latest_checkpoint(os.path.join(d, "checkpoints")).endswith("ckpt-12")
    metrics = json.load(open(os.path.join(d, "metrics.json")))
    assert metrics["step"] == 12 and metrics["final"]["eval_examples"] == 256
    assert metrics["final"]["iwae_8"] >= metrics["final"]["elbo"]
    for name in ("samples/epoch_0001.png", "samples/epoch_0002.png", "samples.png"):
        png = tf.io.decode_png(tf.io.read_file(os.path.join(d, name)))
        assert png.shape == (88, 88, 1)  # 8 images of 28x28 in a 3x3 grid with 1-pixel gaps


def test_tensorboard_events_have_the_expected_tags_and_steps(vae_run):
    train_tags, _ = _events(os.path.join(vae_run.model_dir, "train"))
    for name in METRICS:
        assert train_tags[name] == [2, 4, 6, 6, 8, 10, 12, 12]  # every 2 steps + epoch ends
    assert train_tags["images_per_sec"] == train_tags["slowest_step_seconds"] == [6, 12]
    assert "_hparams_/session_start_info" in train_tags
    eval_tags, acc = _events(os.path.join(vae_run.model_dir, "eval"))
    for name in METRICS + ["samples", "reconstructions"]:
        assert eval_tags[name] == [6, 12]
    assert eval_tags["final/iwae_8"] == [12]
    loss = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    assert loss[1] < loss[0]  # the eval loss fell between the two epochs
    image = acc.Tensors("samples")[-1].tensor_proto
    width, height = tf.make_ndarray(image)[:2]
    assert (int(width), int(height)) == (88, 88)


def test_tensorboard_server_serves_the_run(vae_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [exe, "--logdir", vae_run.model_dir, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
        deadline, tags = time.time() + 90, {}
        while time.time() < deadline and not {"train", "eval"} <= set(tags):
            try:
                tags = json.load(urllib.request.urlopen(url, timeout=5))
            except OSError:
                time.sleep(1)
        assert "loss" in tags["train"] and "final/iwae_8" in tags["eval"]
        series = json.load(
            urllib.request.urlopen(
                f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=eval&tag=loss", timeout=5
            )
        )
        assert [row[1] for row in series] == [6, 12]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_resume_continues_from_the_last_checkpoint(vae_run, mnist_dir, tmp_path):
    shutil.copytree(vae_run.model_dir, tmp_path / "run")
    result = train.fit(
        "vae",
        vae.small(),
        small_data(mnist_dir),
        small_train(tmp_path, epochs=3, export=False),
        verbose=0,
    )
    assert result.step == 18
    steps = [
        int(p.split("-")[-1])
        for p in tf.train.get_checkpoint_state(
            str(tmp_path / "run" / "checkpoints")
        ).all_model_checkpoint_paths
    ]
    assert steps == [6, 12, 18]


def test_a_run_with_another_model_config_is_refused(vae_run, mnist_dir, tmp_path):
    shutil.copytree(vae_run.model_dir, tmp_path / "run")
    other = vae.Config(latent_dim=5, hidden=8, eval_k=8, export_k=8, chunk=4)
    with pytest.raises(UsageError, match=r"model.latent_dim 4 -> 5"):
        train.fit("vae", other, small_data(mnist_dir), small_train(tmp_path), verbose=0)


def test_evaluation_is_deterministic(vae_run, mnist_dir, tmp_path):
    shutil.copytree(vae_run.model_dir, tmp_path / "run")
    run = train._Run("vae", vae.small(), small_data(mnist_dir), small_train(tmp_path))
    assert run.restore() == 12
    seed = tf.constant([0, 2])
    a, b = train.evaluate(run, seed), train.evaluate(run, seed)
    assert a == b and a["loss"] == pytest.approx(vae_run.eval_logs["loss"], rel=1e-5)


class _NaNAfter4(vae.VAE):
    """Training goes non-finite at step 5 (gradients and loss), as a diverging run does."""

    def _objective(self, x, label, seed):
        terms = super()._objective(x, label, seed)
        poison = tf.where(self.optimizer.iterations >= 4, np.nan, 0.0)
        return (terms[0] + poison,) + terms[1:]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch):
    def build(config, spec, lr):
        model = _NaNAfter4(spec, config)
        model.compile(optimizer=vae.keras.optimizers.Adam(lr))
        return model

    monkeypatch.setattr(vae, "build", build)
    cfg = small_train(tmp_path, checkpoint_every_steps=2, export=True)
    with pytest.raises(train.TrainingError, match=r"loss became nan at step 5.*ckpt-4"):
        train.fit("vae", vae.small(), small_data(mnist_dir), cfg, verbose=0)
    monkeypatch.undo()
    model, step = runs.restore_model(cfg.model_dir)
    assert step == 4
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert not os.path.exists(cfg.export_dir)  # nothing was exported


def test_xla_training_is_reproducible_from_the_seed():
    """Stateless seeds make XLA steps repeatable (stateful RNG would ignore its seed there).

    XLA's RNG stream differs from TF's CPU kernels for the same seed, so XLA and non-XLA
    runs agree in distribution, not bit for bit; exports and pictures never use XLA.
    """
    from gen_keras.data import DataSpec

    spec = DataSpec((8, 12, 1), "binary_static", 10)
    batch = {
        "image": tf.cast(tf.random.stateless_uniform([4, 8, 12, 1], [1, 1]) < 0.4, tf.float32),
        "label": tf.zeros([4], tf.int32),
    }
    models = [vae.build(vae.small(), spec, 1e-2) for _ in range(3)]
    for m in models:
        m.build_for_training(batch)
        m.set_weights(models[0].get_weights())
    steps = [tf.function(m.train_step, jit_compile=True) for m in models]
    a = [float(steps[0](dict(batch, seed=tf.constant([3, i])))["loss"]) for i in range(3)]
    b = [float(steps[1](dict(batch, seed=tf.constant([3, i])))["loss"]) for i in range(3)]
    c = [float(steps[2](dict(batch, seed=tf.constant([4, i])))["loss"]) for i in range(3)]
    assert a == b and a != c and all(np.isfinite(a))
    for x, y in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert train.use_xla("on") and not train.use_xla("off")
    assert train.use_xla("auto") == bool(tf.config.list_logical_devices("GPU"))


def test_train_config_rejects_bad_values():
    with pytest.raises(UsageError, match="batch_size=0 must be > 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(UsageError, match="strategy='horovod'"):
        TrainConfig(strategy="horovod")


def test_killed_trainer_resumes_and_finishes_with_the_same_step_count(mnist_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "trainers.vae",
        "--config=small",
        f"--data_dir={mnist_dir}",
        "--train_split=train[:1024]",
        "--eval_split=test[:128]",
        "--batch_size=32",
        "--epochs=2",
        "--steps_per_epoch=15",
        "--checkpoint_every_steps=3",
        f"--model_dir={tmp_path / 'run'}",
        "--noexport",
        "--nodownload",
    ]
    ckpts = tmp_path / "run" / "checkpoints"
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        latest = tf.train.latest_checkpoint(str(ckpts)) if ckpts.exists() else None
        if latest and int(latest.split("-")[-1]) >= 6:
            break
        time.sleep(0.2)
    assert first.poll() is None, "the trainer ended before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The newest intact checkpoint on disk, as the trainer finds it. Not the `checkpoint`
    # state file: a kill between a save's files and that file's rewrite leaves it one behind.
    intact = [
        n
        for n in checkpoints.indexed_steps(str(ckpts))
        if checkpoints.damage(str(ckpts / f"ckpt-{n}")) is None
    ]
    killed_at = max(intact)
    assert 6 <= killed_at < 30
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resumed at step {killed_at}" in second.stdout or killed_at % 15 == 0
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["step"] == 30
    assert tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-30")


def test_sigterm_saves_the_current_step_and_a_rerun_loses_nothing(mnist_dir, tmp_path):
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "trainers.vae",
        "--config=small",
        f"--data_dir={mnist_dir}",
        "--train_split=train[:1024]",
        "--eval_split=test[:64]",
        "--batch_size=16",
        "--epochs=2",
        "--steps_per_epoch=300",
        f"--model_dir={tmp_path / 'run'}",
        "--noexport",
        "--nodownload",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/2"):
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    step = int(err.split("preempted by SIGTERM at step ")[1].split(";")[0])
    assert 0 < step < 600
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert latest.endswith(f"ckpt-{step}")  # exactly the step reached: nothing lost
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert step % 300 == 0 or f"resumed at step {step}" in rerun.stdout
    assert json.load(open(tmp_path / "run" / "metrics.json"))["step"] == 600


# Checkpoint faults: a run with ckpt-4, ckpt-8 and ckpt-12 on disk, its newest one damaged.
CKPT_FLAGS = dict(batch_size=16, epochs=3, steps_per_epoch=4, eval_steps=2, export=False)
DATA = "ckpt-12.data-00000-of-00001"


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _flip(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        f.seek(0)
        f.write(data)


DAMAGE = {
    "truncated_data": lambda d: _truncate(d / DATA),
    "flipped_data": lambda d: _flip(d / DATA),
    "truncated_index": lambda d: _truncate(d / "ckpt-12.index"),
    "deleted_data": lambda d: os.remove(d / DATA),
    "deleted_index": lambda d: os.remove(d / "ckpt-12.index"),
}
STATE_FILES = {
    "garbage_state": b"\x00\xff model_checkpoint_path: {{{ not a proto",
    "dangling_state": b'model_checkpoint_path: "ckpt-99"\nall_model_checkpoint_paths: "ckpt-99"\n',
}


@pytest.fixture(scope="module")
def three_checkpoints(mnist_dir, tmp_path_factory):
    """A small VAE run, 3 epochs of 4 steps: ckpt-4, ckpt-8, ckpt-12."""
    tmp = tmp_path_factory.mktemp("three_checkpoints")
    train.fit("vae", vae.small(), small_data(mnist_dir), small_train(tmp, **CKPT_FLAGS), verbose=0)
    assert checkpoints.indexed_steps(str(tmp / "run" / "checkpoints")) == [4, 8, 12]
    return tmp / "run"


def _copy_run(source, tmp_path):
    shutil.copytree(source, tmp_path / "run")
    return tmp_path / "run" / "checkpoints"


def _resume_run(mnist_dir, tmp_path, **kw):
    return train._Run("vae", vae.small(), small_data(mnist_dir), small_train(tmp_path, **kw))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(
    damage, three_checkpoints, mnist_dir, tmp_path, caplog
):
    ckpts = _copy_run(three_checkpoints, tmp_path)
    DAMAGE[damage](ckpts)
    (ckpts / "ckpt-13_temp").mkdir()  # what a save killed half-way leaves
    (ckpts / "ckpt-13_temp" / "part-00000-of-00001.index").write_bytes(b"partial")
    run = _resume_run(mnist_dir, tmp_path, **CKPT_FLAGS)
    with caplog.at_level("WARNING"):
        assert run.restore() == 8
    warnings = [r.getMessage() for r in caplog.records if "damaged checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "ckpt-12" in warnings[0] and "resuming from ckpt-8" in warnings[0]
    # the intact ones are all still there; the damaged one is set aside, not deleted
    assert checkpoints.indexed_steps(str(ckpts)) == [4, 8]
    for step in (4, 8):
        assert (ckpts / f"ckpt-{step}.data-00000-of-00001").exists()
    assert not list(ckpts.glob("ckpt-12.*")) and list((ckpts / "damaged").glob("ckpt-12.*"))
    assert not (ckpts / "ckpt-13_temp").exists()
    assert tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-8")  # state file rewritten
    fresh = _resume_run(mnist_dir, tmp_path / "fresh", **CKPT_FLAGS)
    fresh.checkpoint.read(str(ckpts / "ckpt-8")).assert_existing_objects_matched()
    for a, b in zip(run.model.get_weights(), fresh.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # ckpt-8's weights, not a mixture with ckpt-12's


@pytest.mark.parametrize("state", sorted(STATE_FILES))
def test_a_garbled_or_dangling_state_file_still_resumes_the_newest_checkpoint(
    state, three_checkpoints, mnist_dir, tmp_path
):
    ckpts = _copy_run(three_checkpoints, tmp_path)
    (ckpts / "checkpoint").write_bytes(STATE_FILES[state])
    run = _resume_run(mnist_dir, tmp_path, **CKPT_FLAGS)
    assert run.restore() == 12
    assert checkpoints.indexed_steps(str(ckpts)) == [4, 8, 12] and not (ckpts / "damaged").exists()
    assert tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-12")


def test_no_intact_checkpoint_stops_with_one_line_naming_them(three_checkpoints, tmp_path):
    ckpts = _copy_run(three_checkpoints, tmp_path)
    for step in (4, 8, 12):
        _flip(ckpts / f"ckpt-{step}.data-00000-of-00001")
    before = sorted(p.name for p in ckpts.iterdir())
    model, _ = runs.restore_model(str(three_checkpoints))  # the intact original restores
    with pytest.raises(train.TrainingError, match=r"no intact checkpoint") as error:
        checkpoints.restore_newest_intact(tf.train.Checkpoint(model=model), str(ckpts), True)
    message = str(error.value)
    assert "\n" not in message and all(f"ckpt-{s}:" in message for s in (4, 8, 12))
    assert sorted(p.name for p in ckpts.iterdir()) == before  # nothing moved or deleted
    for name in before:  # a state file without any checkpoint is no fresh start either
        if name != "checkpoint":
            os.remove(ckpts / name)
    with pytest.raises(train.TrainingError, match=r"no ckpt-<step>.index file"):
        checkpoints.restore_newest_intact(tf.train.Checkpoint(model=model), str(ckpts), True)


def test_a_diverging_run_keeps_only_finite_checkpoints_and_a_rerun_resumes_from_one(
    mnist_dir, tmp_path
):
    """learning_rate=500: Adam's second moments overflow while the loss is still finite."""
    cfg = small_train(tmp_path, learning_rate=500.0, checkpoint_every_steps=1, export=True)
    errors = []
    for _ in range(2):  # the rerun resumes from the kept checkpoint and diverges the same way
        with pytest.raises(train.TrainingError, match=r"is not finite at step") as error:
            train.fit("vae", vae.small(), small_data(mnist_dir), cfg, verbose=0)
        errors.append(str(error.value))
    failed = [int(re.search(r"at step (\d+)", e)[1]) for e in errors]
    kept = [int(re.search(r"kept: .*ckpt-(\d+)$", e)[1]) for e in errors]
    assert failed[0] == failed[1] and kept == [failed[0] - 1] * 2, errors
    ckpts = os.path.join(cfg.model_dir, "checkpoints")
    assert checkpoints.indexed_steps(ckpts)[-1] == kept[0]
    for step in checkpoints.indexed_steps(ckpts):  # every tensor of every checkpoint is finite
        assert checkpoints.damage(os.path.join(ckpts, f"ckpt-{step}")) is None
    model, step = runs.restore_model(cfg.model_dir)
    assert step == kept[0] and all(np.isfinite(w).all() for w in model.get_weights())
    assert not os.path.exists(cfg.export_dir)


def test_the_seed_fixes_the_initial_weights_and_the_whole_run(mnist_dir, tmp_path):
    data = dataclasses.replace(small_data(mnist_dir), eval_split="test[:32]")

    def initial(seed, name):
        cfg = small_train(tmp_path / name, seed=seed)
        return train._Run("vae", vae.small(), data, cfg).model.get_weights()

    a, b, c = initial(7, "a"), initial(7, "b"), initial(8, "c")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c, strict=True))

    def run(name):
        cfg = small_train(tmp_path / name, seed=7, epochs=1, steps_per_epoch=3, export=False)
        return train.fit("vae", vae.small(), data, cfg, verbose=0)

    first, second = run("d"), run("e")  # data order and noise as well as the weights
    assert first.final_metrics == second.final_metrics and first.eval_logs == second.eval_logs
    for x, y in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "field, value",
    [("learning_rate", 1e-3), ("batch_size", 16), ("seed", 1), ("steps_per_epoch", 5)],
)
def test_resuming_with_another_learning_field_is_refused(
    field, value, vae_run, mnist_dir, tmp_path
):
    shutil.copytree(vae_run.model_dir, tmp_path / "run")
    record = (tmp_path / "run" / "config.json").read_bytes()
    old = json.loads(record)["train"][field]
    cfg = small_train(tmp_path, epochs=3, **{field: value})
    with pytest.raises(UsageError, match=rf"train\.{field} {old!r} -> {value!r}") as error:
        train.fit("vae", vae.small(), small_data(mnist_dir), cfg, verbose=0)
    assert f"--allow_config_change={field}" in str(error.value)
    assert (tmp_path / "run" / "config.json").read_bytes() == record  # nothing rewritten


def test_an_allowed_change_is_applied_and_recorded_in_the_history(vae_run, mnist_dir, tmp_path):
    shutil.copytree(vae_run.model_dir, tmp_path / "run")
    cfg = small_train(
        tmp_path, epochs=3, learning_rate=1e-3, allow_config_change=["learning_rate"], export=False
    )
    result = train.fit("vae", vae.small(), small_data(mnist_dir), cfg, verbose=0)
    assert result.step == 18
    record = json.load(open(tmp_path / "run" / "config.json"))
    assert record["train"]["learning_rate"] == 1e-3
    assert record["history"] == [{"step": 12, "changes": {"train.learning_rate": [3e-3, 1e-3]}}]
    for opt, _ in result.model.optimizer_variables():  # the new rate is the one trained with
        assert float(opt.learning_rate) == pytest.approx(1e-3)
    # the new rate is now the run's own; going back to the old one is another change
    train._Run("vae", vae.small(), small_data(mnist_dir), dataclasses.replace(cfg, epochs=4))
    with pytest.raises(UsageError, match=r"train\.learning_rate 0\.001 -> 0\.003"):
        train._Run("vae", vae.small(), small_data(mnist_dir), small_train(tmp_path, epochs=4))


def _trainer(mnist_dir, model_dir, *extra):
    """The trainer command that continues the three_checkpoints run (same flags)."""
    return [
        sys.executable,
        "-m",
        "trainers.vae",
        "--config=small",
        f"--data_dir={mnist_dir}",
        "--nodownload",
        "--train_split=train[:512]",
        "--eval_split=test[:64]",  # not part of the run's identity: a cheaper final bound
        "--batch_size=16",
        "--steps_per_epoch=4",
        "--eval_steps=2",
        "--learning_rate=0.003",
        "--noexport",
        f"--model_dir={model_dir}",
        *extra,
    ]


def test_the_trainer_resumes_past_a_corrupt_checkpoint_and_stops_when_none_is_intact(
    three_checkpoints, mnist_dir, tmp_path
):
    ckpts = _copy_run(three_checkpoints, tmp_path)
    _flip(ckpts / DATA)
    cmd = _trainer(mnist_dir, tmp_path / "run", "--epochs=3")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 1 and "ckpt-12" in warnings[0] and "ckpt-8" in warnings[0]
    assert json.load(open(tmp_path / "run" / "metrics.json"))["step"] == 12
    assert checkpoints.indexed_steps(str(ckpts)) == [4, 8, 12]  # steps 9-12 trained again
    assert list((ckpts / "damaged").glob("ckpt-12.*"))

    for step in (4, 8, 12):
        _truncate(ckpts / f"ckpt-{step}.data-00000-of-00001")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "no intact checkpoint" in errors[0]
    assert all(f"ckpt-{s}:" in errors[0] for s in (4, 8, 12))


# -- Polyak averaging (ema_decay) ---------------------------------------------------------


def test_averages_follow_the_ema_formula_and_swap_in_and_out(mnist_dir):
    data = ImageData(small_data(mnist_dir), "train[:64]", training=True)
    batch = next(iter(data.dataset(16, seed=0, epoch=0)))
    model = runs.build("vae", vae.small(), data.spec, 1e-2)
    averaged.keep_averages(model, 0.5)
    model.build_for_training(dummy_batch(data.spec))
    step = tf.function(model.train_step)
    expected = None
    for i in range(3):
        step(dict(batch, seed=tf.constant([i, 0], tf.int32)))
        weights = [w.numpy() for w in model.trainable_variables]
        # the first step sets the averages to the weights; then a <- m a + (1 - m) w with
        # the warmed-up momentum m = min(0.5, (1 + i) / (10 + i)): 2/11, then 3/12
        m = min(0.5, (1 + i) / (10 + i))
        expected = (
            weights
            if expected is None
            else [m * a + (1 - m) * w for a, w in zip(expected, weights, strict=True)]
        )
    with averaged.averaged_weights(model):
        for w, a in zip(model.trainable_variables, expected, strict=True):
            np.testing.assert_allclose(w.numpy(), a, rtol=1e-6, atol=1e-7)
    for w, own in zip(model.trainable_variables, weights, strict=True):
        np.testing.assert_array_equal(w.numpy(), own)  # swapped back exactly
    assert any(not np.allclose(a, w) for a, w in zip(expected, weights, strict=True))
    momenta = [float(averaged.warm_momentum(n, 0.999)) for n in (0, 1, 90, 8991, 20_000)]
    assert momenta == pytest.approx([0.0, 2 / 11, 91 / 100, 0.999, 0.999])
    plain = runs.build("vae", vae.small(), data.spec, 1e-2)
    plain.build_for_training(dummy_batch(data.spec))
    assert averaged.swap_averages(plain) is False  # ema_decay 0: nothing kept, nothing swapped


def test_a_run_with_ema_evaluates_exports_and_resumes_with_its_averages(mnist_dir, tmp_path):
    data = dataclasses.replace(small_data(mnist_dir), eval_split="test[:64]")

    def fit(name, epochs, **kw):
        cfg = small_train(tmp_path / name, epochs=epochs, ema_decay=0.8, **kw)
        return train.fit("vae", vae.small(), data, cfg, verbose=0)

    straight = fit("straight", 2)
    fit("split", 1, export=False)
    resumed = fit("split", 2, export=False)
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the averages were checkpointed and resumed
    # The returned model, a restored run and the export all hold the averages, not the
    # trained weights (which the last checkpoint keeps too).
    restored, step = runs.restore_model(straight.model_dir)
    assert step == 12
    for a, b in zip(straight.model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    bare = runs.build("vae", vae.small(), straight.model.spec)
    bare.build_for_training(dummy_batch(bare.spec), build_optimizers=False)  # weights only
    tf.train.Checkpoint(model=bare).read(
        os.path.join(straight.model_dir, "checkpoints", "ckpt-12")
    ).expect_partial()
    assert any(
        not np.allclose(a, b)
        for a, b in zip(bare.get_weights(), restored.get_weights(), strict=True)
    )
    run = train._Run("vae", vae.small(), data, small_train(tmp_path / "straight", ema_decay=0.8))
    run.restore()
    with averaged.averaged_weights(run.model):
        logs = train.evaluate(run, tf.constant([0, 2]))
    assert logs == pytest.approx(straight.eval_logs, rel=1e-6)  # the epoch's eval used them
    from tests.serving_standin import Served

    images = (np.arange(2 * 28 * 28).reshape(2, 28, 28, 1) % 3 == 0).astype(np.uint8)
    served = Served(straight.export_path)
    try:
        z = served("encode", images=images)["z_mean"]
    finally:
        served.close()
    x = tf.constant(images, tf.float32)
    np.testing.assert_allclose(z, restored.posterior(x).mean(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(z, bare.posterior(x).mean(), atol=1e-4)


def test_ema_decay_is_part_of_a_runs_identity_and_old_records_mean_zero(
    vae_run, mnist_dir, tmp_path
):
    shutil.copytree(vae_run.model_dir, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    record = json.loads(path.read_text())
    del record["train"]["ema_decay"]  # a run recorded before the field existed
    path.write_text(json.dumps(record))
    with pytest.raises(UsageError, match=r"train\.ema_decay 0\.0 -> 0\.9"):
        cfg = small_train(tmp_path, epochs=3, ema_decay=0.9, export=False)
        train.fit("vae", vae.small(), small_data(mnist_dir), cfg, verbose=0)
    cfg = small_train(tmp_path, epochs=3, export=False)
    assert train.fit("vae", vae.small(), small_data(mnist_dir), cfg, verbose=0).step == 18
    with pytest.raises(UsageError, match=r"ema_decay=1\.0 must be in \[0, 1\)"):
        small_train(tmp_path, ema_decay=1.0)


def test_a_model_field_added_after_a_run_was_recorded_reads_its_default():
    """A run recorded before a model field existed ran with its default: it resumes under
    the default and is refused under another value."""
    spec = DataSpec((28, 28, 1), "binary_static", 10)
    record = train._record(
        "pixelcnn", pixelcnn.reproduce(), DataConfig(), TrainConfig(model_dir="x"), spec
    )
    old = json.loads(json.dumps(record))
    for field in ("bottleneck", "activations", "output_layers"):
        del old["model"][field]
    assert train._check_record(old, record, "x") == {}
    other = train._record(
        "pixelcnn",
        dataclasses.replace(pixelcnn.reproduce(), output_layers=2),
        DataConfig(),
        TrainConfig(model_dir="x"),
        spec,
    )
    with pytest.raises(UsageError, match=r"model\.output_layers 1 -> 2"):
        train._check_record(old, other, "x")


def test_the_time_budget_and_the_training_clock_survive_resumes(mnist_dir, tmp_path):
    """max_train_minutes counts this invocation's training; the run's clock (training
    seconds at each checkpoint) carries across resumes into metrics.json and RunResult."""
    data = dataclasses.replace(small_data(mnist_dir), eval_split="test[:32]")
    cfg = small_train(
        tmp_path, epochs=10_000, steps_per_epoch=8, max_train_minutes=0.01, export=False
    )
    first = train.fit("vae", vae.small(), data, cfg, verbose=0)
    assert first.train_seconds >= 0.6 and 1 < first.step < 80_000
    clock = runs.read_clock(first.model_dir)
    assert clock[first.step] == first.train_seconds
    kept = checkpoints.indexed_steps(os.path.join(first.model_dir, "checkpoints"))
    assert set(clock) <= set(kept) and first.step in kept
    metrics = json.loads(open(os.path.join(first.model_dir, "metrics.json")).read())
    assert metrics["train_seconds"] == first.train_seconds
    second = train.fit("vae", vae.small(), data, cfg, verbose=0)
    assert second.step > first.step and second.train_seconds >= first.train_seconds + 0.6
    # A checkpoint the clock does not know (a run from before the clock): training goes
    # on, and the run's clock is unknown rather than restarted from zero.
    os.remove(os.path.join(first.model_dir, runs.TRAIN_CLOCK))
    third = train.fit("vae", vae.small(), data, cfg, verbose=0)
    assert third.step > second.step and third.train_seconds is None
    assert not os.path.exists(os.path.join(first.model_dir, runs.TRAIN_CLOCK))


def test_the_training_clock_leaves_out_the_writers_flushes(mnist_dir, tmp_path, monkeypatch):
    """Each epoch ends with evaluation, summaries, writer flushes and a checkpoint: none of
    them is training. A slow flush (a busy disk) must not reach the clock."""
    made = []

    class SlowFlush:
        def __init__(self, writer):
            self.writer = writer

        def __getattr__(self, name):
            return getattr(self.writer, name)

        def flush(self):
            time.sleep(1.5)
            made.append(1)
            return self.writer.flush()

    real_writer = train._Run.writer
    monkeypatch.setattr(train._Run, "writer", lambda run, name: SlowFlush(real_writer(run, name)))
    data = dataclasses.replace(small_data(mnist_dir), eval_split="test[:32]")
    cfg = small_train(tmp_path, epochs=2, steps_per_epoch=3, export=False)
    result = train.fit("vae", vae.small(), data, cfg, verbose=0)
    assert result.step == 6 and len(made) >= 4  # both writers flushed at both epochs' ends
    # Five timed steps of a small VAE; the flushes between the epochs were 3 s.
    assert 0 < result.train_seconds < 1.5
    _, acc = _events(os.path.join(result.model_dir, "train"))
    slowest = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("slowest_step_seconds")]
    assert len(slowest) == 2 and 0 < max(slowest) <= result.train_seconds


def test_evaluation_traces_its_step_once_per_run(mnist_dir, tmp_path, monkeypatch):
    """Every epoch evaluates, under averaged weights, and the end of fit evaluates again: one
    trace of test_step serves them all (a trace per evaluation costs seconds on big models)."""
    traces = []

    class Counted(vae.VAE):
        def test_step(self, data):
            traces.append(1)  # Python runs only while tracing
            return super().test_step(data)

    def build(config, spec, lr):
        model = Counted(spec, config)
        model.compile(optimizer=vae.keras.optimizers.Adam(lr))
        return model

    monkeypatch.setattr(vae, "build", build)
    data = dataclasses.replace(small_data(mnist_dir), eval_split="test[:32]")
    counts = []
    for epochs in (1, 3):
        traces.clear()
        cfg = small_train(
            tmp_path / str(epochs), epochs=epochs, steps_per_epoch=2, ema_decay=0.9, export=False
        )
        result = train.fit("vae", vae.small(), data, cfg, verbose=0)
        assert result.step == 2 * epochs
        counts.append(len(traces))
    assert counts[0] >= 1 and counts[1] == counts[0], counts


def test_the_training_clock_leaves_out_the_input_pipelines_teardown(
    mnist_dir, tmp_path, monkeypatch
):
    """An epoch's training iterator is destroyed with the epoch's bookkeeping, off the clock:
    a slow teardown (tf.data's threads; 21 s measured once) must not reach the next epoch."""
    torn_down = []
    real = train._Run.distributed

    class SlowTeardown:
        def __init__(self, dataset):
            self.dataset = dataset

        def __iter__(self):
            iterator = iter(self.dataset)
            weakref.finalize(iterator, lambda: (time.sleep(1.5), torn_down.append(1)))
            return iterator

    def distributed(run, data, **kwargs):
        dataset = real(run, data, **kwargs)
        return SlowTeardown(dataset) if data is run.train_data else dataset

    monkeypatch.setattr(train._Run, "distributed", distributed)
    data = dataclasses.replace(small_data(mnist_dir), eval_split="test[:32]")
    cfg = small_train(tmp_path, epochs=2, steps_per_epoch=3, export=False)
    result = train.fit("vae", vae.small(), data, cfg, verbose=0)
    assert result.step == 6 and len(torn_down) == 2  # both epochs' iterators, 3 s in all
    assert 0 < result.train_seconds < 1.5


# -- learning-rate schedule ----------------------------------------------------------------


def test_the_schedule_warms_up_linearly_then_decays_every_step():
    factors = [train.rate_factor(t, 4, 0.5) for t in range(7)]
    assert factors == [0.25, 0.5, 0.75, 1.0, 0.5, 0.25, 0.125]
    assert [train.rate_factor(t, 0, 0.5) for t in range(3)] == [1.0, 0.5, 0.25]
    assert [train.rate_factor(t, 0, 1.0) for t in range(3)] == [1.0, 1.0, 1.0]


def test_a_scheduled_run_logs_its_rate_and_resumes_on_the_same_schedule(mnist_dir, tmp_path):
    data = dataclasses.replace(small_data(mnist_dir), eval_split="test[:32]")

    def fit(name, epochs):
        cfg = small_train(
            tmp_path / name, epochs=epochs, lr_warmup_steps=3, lr_decay=0.8, export=False
        )
        return train.fit("vae", vae.small(), data, cfg, verbose=0)

    straight = fit("straight", 2)
    fit("split", 1)
    resumed = fit("split", 2)
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    rate = float(straight.model.optimizer.learning_rate)
    assert rate == pytest.approx(3e-3 * 0.8**9, rel=1e-6)  # the rate of step 11 (0-based)
    _, events = _events(os.path.join(straight.model_dir, "train"))
    logged = {
        e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("learning_rate")
    }
    assert sorted(logged) == [2, 4, 6, 8, 10, 12]
    for step, value in logged.items():  # logged after step `step`: the rate it trained at
        assert value == pytest.approx(3e-3 * train.rate_factor(step - 1, 3, 0.8), rel=1e-6)
    constant = train.fit(
        "vae", vae.small(), data, small_train(tmp_path / "c", epochs=1, export=False), verbose=0
    )
    tags, _ = _events(os.path.join(constant.model_dir, "train"))
    assert "loss" in tags and "learning_rate" not in tags  # no schedule, no rate logged


def test_intra_op_threads_are_set_before_the_first_op_or_refused_with_one_line(tmp_path):
    # a fresh process: set before any op, the runtime takes it
    code = (
        "import tensorflow as tf; from gen_keras import train; train.set_intra_op_threads(1); "
        "print(tf.config.threading.get_intra_op_parallelism_threads(), "
        "float(tf.reduce_sum(tf.ones([3]))))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.split() == ["1", "3.0"], out.stderr[-2000:]
    # this process already runs ops: another value is refused before the run directory exists
    tf.reduce_sum(tf.ones([2]))
    other = tf.config.threading.get_intra_op_parallelism_threads() + 3
    config = small_train(tmp_path, intra_op_threads=other)
    with pytest.raises(UsageError, match=rf"^intra_op_threads={other}: TensorFlow already runs"):
        train.fit("pixelcnn", pixelcnn.small(), DataConfig(), config, verbose=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match=r"^intra_op_threads=-1 must be >= 0"):
        train.set_intra_op_threads(-1)
