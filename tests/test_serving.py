"""Serving: models.config, export from a checkpoint, REST/gRPC clients against a stand-in
server, the CLI, and signature checks that every family's export must pass."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from gen_keras import contract, export, models
from gen_keras.data import DataSpec
from gen_keras.serving import ServingError
from gen_keras.serving.grpc_client import GrpcClient
from gen_keras.serving.rest import RestClient
from tests.conftest import REPO
from tests.serving_standin import Served, StandIn
from tests.test_export import STATEFUL_RNG

SEEDS = np.array([[1, 2], [3, 4], [5, 6]], np.int32)


@pytest.fixture(scope="module")
def export_root(vae_run):
    return os.path.dirname(os.path.dirname(vae_run.export_path))


@pytest.fixture(scope="module")
def server(export_root):
    standin = StandIn(export_root)
    rest_port, grpc_port = standin.start()
    yield {"rest": f"http://127.0.0.1:{rest_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    standin.stop()


def _parse_config(path):
    with open(path) as f:
        return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())


def test_models_config_lists_every_export_for_the_model_server(export_root, tmp_path):
    config = _parse_config(os.path.join(export_root, "models.config"))
    entries = [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config]
    assert entries == [("vae", "/models/vae", "tensorflow")]
    local = export.write_models_config(export_root, base_path=str(tmp_path / "abs"))
    assert _parse_config(local).model_config_list.config[0].base_path == f"{tmp_path}/abs/vae"
    export.write_models_config(export_root)  # back to the docker layout for other tests


def test_trainers_export_writes_the_next_version_from_the_last_checkpoint(vae_run, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "trainers.export",
        f"--model_dir={vae_run.model_dir}",
        f"--export_dir={tmp_path}",
    ]
    for version in (1, 2):
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"{tmp_path}/vae/{version}" in result.stdout and "step 12" in result.stdout
    fresh, trained = Served(str(tmp_path / "vae" / "2")), Served(vae_run.export_path)
    try:
        np.testing.assert_array_equal(
            fresh("sample", seed=SEEDS)["images"], trained("sample", seed=SEEDS)["images"]
        )
    finally:
        fresh.close()
        trained.close()
    assert _parse_config(tmp_path / "models.config").model_config_list.config[0].name == "vae"
    # Both exports name the run, the step and its training clock there.
    training = export.read_metadata(str(tmp_path / "vae" / "2"))["training"]
    assert training == export.read_metadata(vae_run.export_path)["training"]
    assert training["step"] == 12 and training["train_seconds"] == vae_run.train_seconds > 0
    assert training["model_dir"] == os.path.abspath(vae_run.model_dir)
    bad = subprocess.run(
        [sys.executable, "-m", "trainers.export", f"--model_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "has no config.json" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_rest_client_status_metadata_and_both_request_formats(server, vae_run):
    client = RestClient(server["rest"])
    status = client.status("vae")["model_version_status"][0]
    assert status["version"] == "1" and status["state"] == "AVAILABLE"
    assert {"sample", "log_prob", "encode", "decode", "reconstruct"} <= set(client.metadata("vae"))
    rows = client.predict("vae", {"seed": SEEDS}, "sample")
    cols = client.predict("vae", {"seed": SEEDS}, "sample", row_format=False)
    direct = Served(vae_run.export_path)
    try:
        expected = direct("sample", seed=SEEDS)
    finally:
        direct.close()
    for out in (rows, cols):
        np.testing.assert_array_equal(out["images"], expected["images"])
        np.testing.assert_allclose(out["probs"], expected["probs"], rtol=1e-6)
    lp = client.predict("vae", {"images": expected["images"], "seed": SEEDS}, "log_prob")
    assert lp["elbo"].shape == (3,) and np.all(lp["iwae"] < 0)
    enc = client.predict("vae", {"images": expected["images"]}, "encode", version=1)
    assert enc["z_mean"].shape == (3, 4)


def test_rest_png_outputs_are_base64_decoded(server):
    out = RestClient(server["rest"]).predict("vae", {"seed": SEEDS}, "sample_png")
    images = [tf.io.decode_png(png).numpy() for png in out["png_bytes"]]
    assert len(images) == 3 and images[0].shape == (28, 28, 1)
    assert set(np.unique(images[0])) <= {0, 255}


@pytest.mark.parametrize(
    "model, signature, inputs, message",
    [
        ("vae", "encode", {"images": np.full([1, 28, 28, 1], 3, np.uint8)}, "pixel values"),
        ("nope", "sample", {"seed": SEEDS}, "Servable not found"),
        ("vae", "no_such_signature", {"seed": SEEDS}, "not found in signature def"),
    ],
)
def test_server_errors_reach_the_caller_as_one_clear_message(
    server, model, signature, inputs, message
):
    with pytest.raises(ServingError, match=message):
        RestClient(server["rest"]).predict(model, inputs, signature)
    grpc_client = GrpcClient(server["grpc"])
    try:
        with pytest.raises(ServingError, match=message):
            grpc_client.predict(model, inputs, signature)
    finally:
        grpc_client.close()


def test_grpc_client_matches_rest(server):
    grpc_client = GrpcClient(server["grpc"])
    try:
        out = grpc_client.predict("vae", {"seed": SEEDS}, "sample")
    finally:
        grpc_client.close()
    rest = RestClient(server["rest"]).predict("vae", {"seed": SEEDS}, "sample")
    assert out["images"].dtype == np.uint8
    np.testing.assert_array_equal(out["images"], rest["images"])


def test_rest_client_reports_an_unreachable_server():
    with pytest.raises(ServingError, match="cannot reach the model server"):
        RestClient("http://127.0.0.1:9", timeout=5).status("vae")


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_cli_writes_a_sample_grid(server, transport, tmp_path):
    out = tmp_path / "grid.png"
    flag = f"--rest={server['rest']}" if transport == "rest" else f"--grpc={server['grpc']}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gen_keras.serving.cli",
            "sample",
            "--model=vae",
            "--n=6",
            f"--out={out}",
            flag,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    grid = tf.io.decode_png(tf.io.read_file(str(out))).numpy()
    assert grid.shape == (3 * 29 + 1 - 29, 3 * 29 + 1, 1)  # 6 images: 3 columns, 2 rows


def test_cli_usage_errors_exit_2_with_one_line(server):
    for args in (
        ["sample", "--model=vae", "--n=0", f"--rest={server['rest']}"],
        ["sample"],
        ["fly"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "gen_keras.serving.cli", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr


# -- signature checks every family's export must pass ---------------------------------

FAMILY_SPECS = {  # a small data spec per family, and the signatures its export must have
    "vae": (
        DataSpec((8, 12, 1), "binary_static", 10),
        {"sample", "log_prob", "encode", "decode", "reconstruct"},
    ),
    "autoencoder": (DataSpec((8, 12, 1), "binary_static", 10), {"encode", "decode", "reconstruct"}),
    "classifier": (DataSpec((8, 12, 1), "float", 10), {"classify"}),
    "gan": (DataSpec((8, 12, 1), "float_symmetric", 10), {"sample", "generate"}),
    "pixelcnn": (DataSpec((8, 12, 1), "binary_static", 10), {"sample", "log_prob", "complete"}),
    "pixelrnn": (DataSpec((8, 12, 1), "binary_static", 10), {"sample", "log_prob", "complete"}),
    "semisupervised": (DataSpec((8, 12, 1), "binary_static", 10), {"classify", "sample"}),
}


def _inputs(sig, spec, n, seed):
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, info in sig.inputs.items():
        shape = [n if d.size == -1 else d.size for d in info.tensor_shape.dim]
        dtype = tf.dtypes.as_dtype(info.dtype)
        if name == "images":
            inputs[name] = rng.integers(0, spec.max_value + 1, shape).astype(np.uint8)
        elif name == "label":
            inputs[name] = rng.integers(0, spec.num_classes, shape).astype(np.int32)
        elif dtype.is_integer:
            inputs[name] = rng.integers(0, 2 if dtype == tf.uint8 else 2**20, shape).astype(
                dtype.as_numpy_dtype
            )
        else:
            inputs[name] = rng.normal(size=shape).astype(np.float32)
    return inputs


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_every_family_export_passes_the_model_server_checks(family, tmp_path):
    assert family in FAMILY_SPECS, f"add a small DataSpec for {family!r} to FAMILY_SPECS"
    module, (spec, expected) = models.get(family), FAMILY_SPECS[family]
    model = module.build(module.small(), spec, 1e-3)
    model.build_for_training(
        {"image": tf.zeros([2, *spec.shape]), "label": tf.zeros([2], tf.int32)}
    )
    path = export.export(model, str(tmp_path))
    first, second = Served(path), Served(path)
    try:
        assert {"serving_default", *expected} <= set(first.signatures)
        for name, sig in first.signatures.items():
            for tensor in list(sig.inputs.values()) + list(sig.outputs.values()):
                assert tensor.tensor_shape.dim[0].size == -1, (name, tensor)
            inputs = _inputs(sig, spec, 3, seed=0)
            a, b = first(name, **inputs), second(name, **inputs)
            for key in a:
                assert a[key].shape[0] == 3, (name, key)
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}/{key}")
            big = _inputs(sig, spec, contract.MAX_BATCH + 1, seed=1)
            with pytest.raises(tf.errors.InvalidArgumentError, match="rows per request"):
                first(name, **big)
    finally:
        first.close()
        second.close()
    graph = first.meta.graph_def
    nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
    assert not {n.op for n in nodes} & STATEFUL_RNG
    assert not any(n.attr["_XlaMustCompile"].b for n in nodes)
    shown = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
            "show",
            "--dir",
            path,
            "--all",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0
    assert all(f"signature_def['{name}']" in shown.stdout for name in expected)
    assert json.dumps(sorted(first.signatures))  # names are plain strings
