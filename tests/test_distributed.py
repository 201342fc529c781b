"""tf.distribute: two local workers under MultiWorkerMirroredStrategy, bounded and cleaned up."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from gen_keras import checkpoints, runs
from gen_keras.averaging import keep_averages
from gen_keras.config import from_dict
from gen_keras.data import DataSpec
from gen_keras.models import vae
from gen_keras.models.base import dummy_batch
from tests.conftest import REPO


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _workers(args, n=2, timeout=420):
    """Runs n trainer processes as one cluster; returns their CompletedProcess-like results."""
    ports = _free_ports(n)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(n):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _variables(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    return {  # model weights, optimizer slots and step; not the object graph
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    }


def test_two_workers_train_one_model_with_identical_weights(mnist_dir, tmp_path):
    """With Polyak averaging on (the averages are optimizer variables, mirrored like the
    weights): both workers hold the same weights and averages, and the run's averages are
    what it evaluates and restores."""
    run = tmp_path / "run"
    results = _workers(
        [
            "trainers.vae",
            "--config=small",
            "--strategy=multi_worker",
            f"--data_dir={mnist_dir}",
            "--train_split=train[:512]",
            "--eval_split=test[:64]",
            "--batch_size=32",
            "--epochs=1",
            "--steps_per_epoch=5",
            "--ema_decay=0.5",
            f"--model_dir={run}",
            "--noexport",
            "--nodownload",
        ]
    )
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "final: elbo=" in out
    chief = _variables(str(run / "checkpoints" / "ckpt-5"))
    other = _variables(str(run / ".worker-1" / "ckpt-5"))
    assert chief.keys() == other.keys() and len(chief) >= 30
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    metrics = json.load(open(run / "metrics.json"))
    assert metrics["step"] == 5 and np.isfinite(metrics["final"]["nll_nats"])
    # The chief's checkpoint read raw: its weights and, in the optimizer, their averages;
    # restore_model returns the averages in the weights.
    record = runs.read_record(str(run))
    spec = DataSpec.from_json(record["spec"])
    raw = runs.build("vae", from_dict(vae.Config, record["model"]), spec)
    keep_averages(raw, 0.5)
    raw.build_for_training(dummy_batch(spec))
    optimizer = raw.optimizer_variables()[0][0]
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = checkpoints.run_checkpoint(raw, step, [optimizer])
    checkpoint.read(str(run / "checkpoints" / "ckpt-5")).assert_existing_objects_matched()
    weights = [v.numpy() for v in optimizer._trainable_variables]
    averages = [v.numpy() for v in optimizer._model_variables_moving_average]
    model, restored_step = runs.restore_model(str(run))
    assert restored_step == int(step.numpy()) == 5
    restored = [v.numpy() for v in model.optimizer_variables()[0][0]._trainable_variables]
    for average, value in zip(averages, restored, strict=True):
        np.testing.assert_array_equal(average, value)
    assert sum(not np.allclose(a, w) for a, w in zip(averages, weights, strict=True)) >= 2


def test_sigterm_to_one_worker_stops_all_at_the_same_saved_step(mnist_dir, tmp_path):
    run = tmp_path / "run"
    args = [
        "trainers.vae",
        "--config=small",
        "--strategy=multi_worker",
        f"--data_dir={mnist_dir}",
        "--train_split=train[:512]",
        "--eval_split=test[:64]",
        "--batch_size=16",
        "--epochs=1",
        "--steps_per_epoch=400",
        f"--model_dir={run}",
        "--noexport",
        "--nodownload",
    ]
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-u", "-m", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for line in procs[0].stdout:  # the chief prints; wait until training runs
            if line.startswith("epoch 1/1"):
                break
        time.sleep(3.0)
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [143, 143], [e[-1500:] for e in errs]
    steps = {int(e.split("preempted by SIGTERM at step ")[1].split(";")[0]) for e in errs}
    assert len(steps) == 1  # both saved the same step
    (step,) = steps
    assert 0 < step < 400
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{step}")
    results = _workers(args)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert json.load(open(run / "metrics.json"))["step"] == 400
