"""Exports loaded the way TF Serving loads them (TF1 Session + loader), signature by signature."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from gen_keras import contract, export
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
