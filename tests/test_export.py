"""Exports loaded the way TF Serving loads them (TF1 Session + loader), signature by signature."""

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from gen_keras import contract, export, runs
from gen_keras.config import UsageError
from gen_keras.data import DataSpec
from gen_keras.models import autoencoder
from tests.conftest import REPO
from tests.serving_standin import Served

VAE_SIGNATURES = {
    "serving_default",
    "sample",
    "sample_png",
    "log_prob",
    "encode",
    "decode",
    "reconstruct",
}
STATEFUL_RNG = {
    "RandomStandardNormal",
    "RandomUniform",
    "RandomUniformInt",
    "Multinomial",
    "TruncatedNormal",
    "RandomGamma",
    "RandomPoisson",
    "RandomPoissonV2",
}


@pytest.fixture(scope="module")
def served(vae_run):
    s = Served(vae_run.export_path)
    yield s
    s.close()


def _test_images(n=3):
    from gen_keras.config import DataConfig
    from gen_keras.data import ImageData
    from tests.conftest import shared_tfds_dir

    data = ImageData(
        DataConfig(data_dir=shared_tfds_dir(), download=False), f"test[:{n}]", training=False
    )
    return next(iter(data.dataset(n)))["image"].numpy().astype(np.uint8)


def test_export_layout_and_signatures(vae_run, served):
    root, version = os.path.split(vae_run.export_path)
    assert version == "1" and os.listdir(root) == ["1"]
    assert os.path.isfile(os.path.join(vae_run.export_path, "saved_model.pb"))
    assert VAE_SIGNATURES <= set(served.signatures)
    sample = served.signatures["sample"]
    assert set(sample.inputs) == {"seed"} and set(sample.outputs) == {"images", "probs"}
    assert served.signatures["serving_default"].outputs.keys() == sample.outputs.keys()
    assert set(served.signatures["log_prob"].outputs) == {"elbo", "iwae"}
    assert set(served.signatures["encode"].outputs) == {"z_mean", "z_stddev"}
    for sig in served.signatures.values():
        for tensor in list(sig.inputs.values()) + list(sig.outputs.values()):
            assert tensor.tensor_shape.dim[0].size == -1  # batch-major, any batch size


def test_every_signature_runs_with_the_right_shapes_dtypes_and_ranges(served):
    seed = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
    images = _test_images()
    out = served("sample", seed=seed)
    assert out["images"].shape == (3, 28, 28, 1) and out["images"].dtype == np.uint8
    assert set(np.unique(out["images"])) <= {0, 1}
    assert out["probs"].dtype == np.float32 and 0 <= out["probs"].min() <= out["probs"].max() <= 1
    lp = served("log_prob", images=images, seed=seed)
    assert lp["elbo"].shape == lp["iwae"].shape == (3,)
    assert np.all(lp["elbo"] < 0) and lp["iwae"].mean() >= lp["elbo"].mean()
    enc = served("encode", images=images)
    assert enc["z_mean"].shape == (3, 4) and np.all(enc["z_stddev"] > 0)
    dec = served("decode", z=enc["z_mean"])
    assert dec["images"].shape == (3, 28, 28, 1) and dec["images"].dtype == np.uint8
    rec = served("reconstruct", images=images, seed=seed)
    assert rec["images"].shape == (3, 28, 28, 1) and set(np.unique(rec["images"])) <= {0, 1}
    np.testing.assert_array_equal(served("serving_default", seed=seed)["images"], out["images"])


def test_same_seed_same_output_across_loads_and_before_export(vae_run, served):
    seed = np.array([[7, 8], [9, 10]], np.int32)
    first = served("sample", seed=seed)
    again = Served(vae_run.export_path)
    try:
        second = again("sample", seed=seed)
        lp_a = served("log_prob", images=_test_images(2), seed=seed)
        lp_b = again("log_prob", images=_test_images(2), seed=seed)
    finally:
        again.close()
    np.testing.assert_array_equal(first["images"], second["images"])
    np.testing.assert_array_equal(lp_a["iwae"], lp_b["iwae"])
    before = vae_run.model.serving_functions()["sample"](tf.constant(seed))
    np.testing.assert_array_equal(before["images"].numpy(), first["images"])
    np.testing.assert_allclose(before["probs"].numpy(), first["probs"], atol=1e-6)
    other = served("sample", seed=seed + 100)
    assert not np.array_equal(other["images"], first["images"])


def test_a_rows_output_does_not_depend_on_the_rest_of_the_batch(served):
    seed = np.array([[1, 1], [2, 2], [3, 3]], np.int32)
    images = _test_images()
    batch = served("log_prob", images=images, seed=seed)
    alone = served("log_prob", images=images[1:2], seed=seed[1:2])
    np.testing.assert_allclose(batch["iwae"][1:2], alone["iwae"], rtol=1e-5)
    np.testing.assert_array_equal(
        served("sample", seed=seed)["images"][2:], served("sample", seed=seed[2:])["images"]
    )


@pytest.mark.parametrize(
    "signature, inputs, message",
    [
        (
            "encode",
            {"images": np.full([2, 28, 28, 1], 2, np.uint8)},
            "pixel values must be in 0..1",
        ),
        (
            "log_prob",
            {"images": np.zeros([2, 28, 28, 1], np.uint8), "seed": np.zeros([3, 2], np.int32)},
            "seed: needs one row per row",
        ),
        (
            "sample",
            {"seed": np.zeros([contract.MAX_BATCH + 1, 2], np.int32)},
            f"at most {contract.MAX_BATCH} rows",
        ),
        ("decode", {"z": np.full([1, 4], np.nan, np.float32)}, "z: must be finite"),
    ],
)
def test_bad_inputs_get_a_clear_error(served, signature, inputs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        served(signature, **inputs)


def test_wrong_shapes_and_dtypes_are_refused_by_the_signature(served):
    with pytest.raises(ValueError, match="Cannot feed value of shape"):
        served("encode", images=np.zeros([2, 28, 27, 1], np.uint8))
    with pytest.raises(ValueError, match="Cannot feed value of shape"):
        served("sample", seed=np.zeros([2, 3], np.int32))
    sig = served.signatures["encode"]
    assert sig.inputs["images"].dtype == tf.uint8.as_datatype_enum


def test_export_has_no_xla_and_no_stateful_rng(vae_run):
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(vae_run.export_path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    graph = sm.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
    ops = {n.op for n in nodes}
    assert not ops & STATEFUL_RNG
    assert any(op.startswith("StatelessRandom") for op in ops)
    assert not any(n.attr["_XlaMustCompile"].b for n in nodes)
    assert not any(fn.attr["_XlaMustCompile"].b for fn in graph.library.function)


def test_saved_model_cli_shows_and_runs_the_signatures(vae_run, tmp_path):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--dir", vae_run.export_path, "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-1000:]
    for name in VAE_SIGNATURES:
        assert f"signature_def['{name}']" in shown.stdout
    ran = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            vae_run.export_path,
            "--tag_set",
            "serve",
            "--signature_def",
            "sample",
            "--input_exprs",
            "seed=[[1,2],[3,4]]",
            "--outdir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-1000:]
    images = np.load(tmp_path / "out" / "images.npy")
    assert images.shape == (2, 28, 28, 1) and images.dtype == np.uint8


def test_versions_are_written_atomically_and_never_overwritten(tmp_path):
    def write(path):
        with open(os.path.join(path, "saved_model.pb"), "w") as f:
            f.write("x")

    root = str(tmp_path / "m")
    assert export.write_versioned(root, write).endswith("/1")
    assert export.write_versioned(root, write).endswith("/2")

    def broken(path):
        write(path)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export.write_versioned(root, broken)
    assert sorted(os.listdir(root)) == ["1", "2"]  # no version 3, no temporary left behind
    with pytest.raises(FileExistsError):
        export.write_versioned(root, write, version=2)
    assert export.versions(root) == [1, 2]


# -- faults: names, races, permissions, leftovers, non-finite weights -------------------


def _write_pb(path):
    with open(os.path.join(path, "saved_model.pb"), "w") as f:
        f.write("x")


def _run_export(model_dir, export_dir, *flags):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.export",
            f"--model_dir={model_dir}",
            f"--export_dir={export_dir}",
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(result):
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return len(errors) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "name", ["../../escaped", "/abs/path", 'a"b', "a\nb", ".", "..", "-x", "a/b", "", "é"]
)
def test_bad_model_names_are_refused(name, tmp_path):
    with pytest.raises(UsageError, match="is not allowed"):
        export.check_name(name)
    with pytest.raises(UsageError):
        export.push(str(tmp_path), str(tmp_path / "root"), name)
    assert not (tmp_path / "root").exists() or os.listdir(tmp_path / "root") == []


def test_good_model_names_are_accepted():
    for name in ["vae", "gan_1", "PixelCNN-2.b", "0"]:
        assert export.check_name(name) == name


def test_trainers_export_refuses_escaping_names_with_exit_2_and_writes_nothing(vae_run, tmp_path):
    root = tmp_path / "root" / "inner"
    result = _run_export(vae_run.model_dir, root, "--model=../../escaped")
    assert result.returncode == 2, result.stderr[-2000:]
    assert _one_error_line(result) and "is not allowed" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_models_config_never_lists_a_directory_with_a_bad_name(tmp_path):
    export.write_versioned(str(tmp_path / "good"), _write_pb)
    os.makedirs(tmp_path / 'bad"name' / "1")
    config = open(export.write_models_config(str(tmp_path))).read()
    assert 'name: "good"' in config and "bad" not in config


def _export_at(root, start, queue):
    while time.time() < start:  # every process renames at (nearly) the same moment
        time.sleep(0.001)
    try:
        queue.put(export.write_versioned(root, _write_pb))
    except Exception as e:  # reported to the test, which fails on it
        queue.put(repr(e))


def test_concurrent_exports_of_one_model_get_distinct_versions(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the children only rename files
    root, queue, n = str(tmp_path / "m"), ctx.Queue(), 6
    start = time.time() + 0.5
    procs = [ctx.Process(target=_export_at, args=(root, start, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    paths = sorted(queue.get(timeout=5) for _ in range(n))
    assert paths == sorted(os.path.join(root, str(v)) for v in range(1, n + 1)), paths
    assert export.versions(root) == list(range(1, n + 1))
    assert [d for d in os.listdir(root) if d.startswith(".tmp-")] == []


def _refresh_config(root, seconds):
    end = time.time() + seconds
    while time.time() < end:
        export.write_models_config(root)


def test_models_config_is_replaced_atomically_under_concurrent_refreshes(tmp_path):
    root = str(tmp_path)
    for name in ("a", "b"):
        export.write_versioned(os.path.join(root, name), _write_pb)
    expected = export.render_models_config(["a", "b"])
    export.write_models_config(root)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_refresh_config, args=(root, 3.0)) for _ in range(2)]
    for p in procs:
        p.start()
    reads = bad = 0
    path = os.path.join(root, export.MODELS_CONFIG)
    while any(p.is_alive() for p in procs) and reads < 100_000:
        try:
            with open(path) as f:
                bad += f.read() != expected
        except FileNotFoundError:
            bad += 1
        reads += 1
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert reads > 100 and bad == 0, (reads, bad)
    assert sorted(os.listdir(root)) == [".lock", "a", "b", "models.config"]


def test_versions_are_readable_by_the_servers_user(vae_run):
    for dirpath, _, files in os.walk(vae_run.export_path):
        assert os.stat(dirpath).st_mode & 0o755 == 0o755, dirpath
        for f in files:
            assert os.stat(os.path.join(dirpath, f)).st_mode & 0o444 == 0o444, f


def test_orphaned_temporaries_are_removed_and_live_ones_kept(tmp_path):
    root = tmp_path / "m"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    host = socket.gethostname()
    orphan = root / f".tmp-{host}-{dead.stdout.strip()}-abc123"
    live = root / f".tmp-{host}-{os.getpid()}-def456"
    old = root / ".tmp-3-xyz"  # the old naming: removed once a day old
    for d in (orphan, live, old):
        os.makedirs(d / "variables")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    export.write_versioned(str(root), _write_pb)
    assert sorted(os.listdir(root)) == sorted(["1", live.name])


def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path):
    keras.utils.set_random_seed(3)
    spec = DataSpec((8, 12, 1), "binary_static", 10)
    model = autoencoder.build(autoencoder.small(), spec, 1e-3)
    model.build_for_training({"image": tf.zeros([2, 8, 12, 1]), "label": tf.zeros([2], tf.int32)})
    weight = model.trainable_variables[1]
    weight.assign(tf.fill(weight.shape, np.nan))
    with pytest.raises(export.ExportError, match=r"1 of \d+ variables hold NaN or Inf"):
        export.export(model, str(tmp_path))
    with pytest.raises(export.ExportError):
        export.save(model, str(tmp_path / "plain"))
    assert os.listdir(tmp_path) == []


def test_trainers_export_never_exports_a_checkpoint_with_nan_weights(vae_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(vae_run.model_dir, run)
    model, step = runs.restore_model(str(run))
    weight = model.trainable_variables[0]
    weight.assign(tf.where(tf.zeros_like(weight) == 0, np.inf, weight))
    ckpt = tf.train.Checkpoint(model=model, step=tf.Variable(step + 1, dtype=tf.int64))
    ckpt.save_counter.assign(step)
    ckpt.save(str(run / "checkpoints" / "ckpt"))  # ckpt-<step + 1>, now the latest
    # The newest is skipped as damaged (with a warning) and the intact one before it exported.
    result = _run_export(run, tmp_path / "exports")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"damaged checkpoint ckpt-{step + 1}" in result.stderr and "not finite" in result.stderr
    loaded = tf.saved_model.load(str(tmp_path / "exports" / "vae" / "1"))
    assert all(np.isfinite(v.numpy()).all() for v in loaded.variables if v.dtype.is_floating)
    # With only the non-finite checkpoint left: one error line, exit 1, nothing exported.
    for path in (run / "checkpoints").iterdir():
        if path.name.startswith("ckpt-") and not path.name.startswith(f"ckpt-{step + 1}."):
            path.unlink()
    result = _run_export(run, tmp_path / "exports2")
    assert result.returncode == 1, result.stderr[-2000:]
    assert _one_error_line(result) and "not finite" in result.stderr
    assert not (tmp_path / "exports2" / "vae").exists() or not os.listdir(
        tmp_path / "exports2" / "vae"
    )
