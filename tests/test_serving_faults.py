"""The clients against hostile model servers on loopback: malformed and oversized replies,
slow drips, huge declared shapes and PNG bombs each give one ServingError line within the
caller's timeout; `cli sample` exits 2 and never claims more samples than it wrote."""

import base64
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from gen_keras.serving import ServingError, cli
from gen_keras.serving.grpc_client import GrpcClient
from gen_keras.serving.rest import RestClient
from tests.conftest import REPO

SEEDS = np.array([[1, 2], [3, 4]], np.int32)


def _png(width=7, height=5, value=200) -> bytes:
    return tf.io.encode_png(np.full([height, width, 1], value, np.uint8)).numpy()


def _png_bomb(side=100_000) -> bytes:
    """A PNG header declaring side x side 8-bit gray pixels (10^10 bytes decoded)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = zlib.compress(b"\0" * 65536)
    idat = b"IDAT" + data
    body += struct.pack(">I", len(data)) + idat + struct.pack(">I", zlib.crc32(idat))
    return b"\x89PNG\r\n\x1a\n" + body


def _b64(png):
    return {"b64": base64.b64encode(png).decode()}


def _rows(pngs):
    """A row-format sample_png reply (what `cli sample` asks for)."""
    return json.dumps({"predictions": [{"png_bytes": _b64(png)} for png in pngs]}).encode()


def _deep(depth):
    return "[" * depth + "1" + "]" * depth


# model name -> what the hostile server does. Every loop below is bounded.
REPLIES = {
    "notjson": (200, b"<html>502 Bad Gateway</html>"),
    "notobject": (200, b"[1, 2, 3]"),
    "missing": (200, json.dumps({"model_spec": {}}).encode()),
    "ragged": (200, json.dumps({"outputs": {"images": [[1, 2], [3]]}}).encode()),
    "ragged_rows": (
        200,
        json.dumps({"predictions": [{"images": [1, 2]}, {"probs": [3, 4]}]}).encode(),
    ),
    "strings": (200, json.dumps({"outputs": {"images": [["a", "b"]]}}).encode()),
    "deep": (200, ('{"predictions": ' + _deep(100_000) + "}").encode()),
    "deepish": (200, ('{"outputs": {"images": ' + _deep(200) + "}}").encode()),
    "badb64": (200, json.dumps({"outputs": {"png_bytes": [{"b64": "!!not base64!!"}]}}).encode()),
    "multiline": (400, json.dumps({"error": "line one\nline two\n\tline three"}).encode()),
    "html500": (500, b"<html>\n<body>Internal\nError</body>\n</html>"),
    "pngbomb": (200, _rows([_png_bomb()] * 4)),
    "notpng": (200, _rows([b"GIF89a" + b"0" * 40] * 4)),
    "fewer": (200, _rows([_png()] * 3)),
    "mixed": (200, _rows([_png()] * 3 + [_png(9, 5)])),
    "good": (200, _rows([_png()] * 4)),
}
BIG = 40 * 2**20


class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _scenario(self):
        return self.path.split("/v1/models/")[-1].split(":")[0].split("/")[0]

    def _send(self, code, body, length=True):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, data: bytes, pause: float):
        for byte in data[:100]:  # at most 100 bytes, ~10 s
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(pause)

    def _serve(self):
        name = self._scenario()
        try:
            if name in REPLIES:
                self._send(*REPLIES[name])
            elif name == "big":  # 40 MB declared and sent
                self._send(200, b"[" + b"0," * (BIG // 2) + b"0]")
            elif name == "endless":  # no Content-Length: read until the connection closes
                self._send(200, b'{"outputs": [' + b"0," * 200_000 + b"0]}", length=False)
            elif name == "slow_body":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self._drip(b" " * 1000, 0.1)
            elif name == "slow_headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._drip(b"X-Padding: " + b"a" * 1000, 0.1)
            elif name == "silent":
                time.sleep(5)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):  # noqa: N802
        self._serve()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._serve()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hostile():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _one_line_error(call, match, within=None):
    start = time.monotonic()
    with pytest.raises(ServingError) as error:
        call()
    elapsed = time.monotonic() - start
    message = str(error.value)
    assert "\n" not in message and len(message) < 600, message
    assert match in message, message
    if within is not None:
        assert elapsed < within, (match, elapsed)
    return message


@pytest.mark.parametrize(
    "model, match",
    [
        ("notjson", "not a JSON object"),
        ("notobject", "not a JSON object"),
        ("missing", "no 'outputs'"),
        ("ragged", "ragged"),
        ("ragged_rows", "different outputs"),
        ("strings", "not numeric"),
        ("deep", "not a JSON object"),
        ("deepish", "nested deeper"),
        ("badb64", "not base64"),
        ("multiline", "HTTP 400: line one line two line three"),
        ("html500", "HTTP 500: <html> <body>Internal Error"),
        ("big", "larger than max_response_bytes"),
    ],
)
def test_malformed_or_hostile_rest_replies_give_one_line(hostile, model, match):
    client = RestClient(hostile, timeout=10)
    row_format = model == "ragged_rows"
    _one_line_error(
        lambda: client.predict(model, {"seed": SEEDS}, "sample", row_format=row_format), match
    )


def test_a_reply_without_length_is_cut_at_the_size_cap(hostile):
    client = RestClient(hostile, timeout=10, max_response_bytes=100_000)
    _one_line_error(
        lambda: client.predict("endless", {"seed": SEEDS}, row_format=False),
        "larger than max_response_bytes=100000",
    )


@pytest.mark.parametrize("model", ["slow_body", "slow_headers", "silent"])
def test_the_timeout_bounds_the_whole_request_even_when_the_server_drips(hostile, model):
    # each byte arrives well within a per-read timeout; only a total deadline stops this
    client = RestClient(hostile, timeout=1.0)
    _one_line_error(lambda: client.predict(model, {"seed": SEEDS}), "timeout=1s", within=2.5)


def test_an_unreachable_server_or_a_bad_url_is_one_line():
    _one_line_error(
        lambda: RestClient("http://127.0.0.1:9", timeout=2).status("vae"), "cannot reach"
    )
    _one_line_error(lambda: RestClient("localhost:8501"), "not an http(s)://host:port URL")


def _cli(hostile, model, out, n=4, timeout=10):
    return cli.main(
        ["sample", f"--model={model}", f"--n={n}", f"--out={out}", f"--rest={hostile}"]
        + [f"--timeout={timeout}"]
    )


@pytest.mark.parametrize(
    "model, match",
    [
        ("pngbomb", "100000x100000 PNG"),
        ("notpng", "not a PNG"),
        ("fewer", "asked for 4 samples, the server returned 3"),
        ("mixed", "differ in size"),
        ("missing", "no 'predictions'"),
        ("notjson", "not a JSON object"),
    ],
)
def test_cli_sample_refuses_bad_replies_with_exit_2_and_writes_nothing(
    hostile, model, match, tmp_path, capsys
):
    out = tmp_path / "grid.png"
    assert _cli(hostile, model, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
    assert not out.exists()


def test_cli_sample_counts_what_it_wrote(hostile, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert _cli(hostile, "good", out) == 0
    assert "wrote 4 samples of good" in capsys.readouterr().out
    grid = tf.io.decode_png(tf.io.read_file(str(out))).numpy()
    assert grid.shape[:2] == (2 * 6 + 1, 2 * 8 + 1)  # 4 samples of 5x7: 2 rows, 2 columns


def test_cli_process_exits_2_with_one_line_within_its_timeout(hostile, tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gen_keras.serving.cli",
            "sample",
            "--model=slow_body",
            f"--rest={hostile}",
            "--timeout=2",
            f"--out={tmp_path / 'grid.png'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "timeout=2s" in lines[-1]
    assert [line for line in lines if line.startswith("error")] == lines[-1:]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - start < 60  # python start-up included; 30 s per read before
    assert not (tmp_path / "grid.png").exists()


_WITHOUT_TF = """
import sys
from gen_keras.serving import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as e:  # argparse's usage errors
    code = e.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "tensorboard"})
print(code, heavy)
"""


def test_the_cli_never_loads_tensorflow_except_for_grpc(hostile, tmp_path):
    # A client starts in a fraction of a second: usage errors, config and sample over REST
    # (PNGs read and written by gen_keras.png) import no TensorFlow, Keras or TensorBoard.
    def run(*args):
        done = subprocess.run(
            [sys.executable, "-c", _WITHOUT_TF, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.stdout.strip().splitlines()[-1], done.stderr  # (exit code, heavy modules)

    out = tmp_path / "grid.png"
    assert run("sample", "--model=good", "--n=4", f"--out={out}", f"--rest={hostile}")[0] == "0 []"
    grid = tf.io.decode_png(tf.io.read_file(str(out))).numpy()
    np.testing.assert_array_equal(grid[1:6, 1:8, 0], np.full([5, 7], 200))  # the first sample
    assert run("config", f"--export_dir={tmp_path / 'exports'}")[0] == "0 []"
    assert (tmp_path / "exports" / "models.config").read_text() == "model_config_list {\n}\n"
    stdout, stderr = run("sample", "--n=4")  # no --model
    assert stdout == "2 []" and stderr.startswith("error: ") and "--model" in stderr, stderr
    stdout, stderr = run("sample", "--model=good", "--n=0", f"--rest={hostile}")
    assert stdout == "2 []" and "--n=0 must be in 1..1024" in stderr, stderr


# -- gRPC ------------------------------------------------------------------------------


def _tensor(**fields):
    proto = tf.make_tensor_proto(np.zeros([0], np.float32))
    proto.Clear()
    proto.dtype = fields.pop("dtype", tf.float32.as_datatype_enum)
    for size in fields.pop("shape"):
        proto.tensor_shape.dim.add().size = size
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(proto, name).extend(value)
        else:
            setattr(proto, name, value)
    return proto


GRPC_REPLIES = {
    "huge": _tensor(shape=[10**6, 10**6], float_val=[1.0]),
    "negative": _tensor(shape=[-5, 2], float_val=[1.0]),
    "short": _tensor(shape=[3, 4], float_val=[1.0, 2.0, 3.0]),
    "content": _tensor(shape=[3, 4], tensor_content=b"\0" * 7),
    "baddtype": _tensor(shape=[2], dtype=999, float_val=[1.0, 2.0]),
    "large": tf.make_tensor_proto(np.zeros([200_000], np.float32)),
}


class _HostileServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request, context):  # noqa: N802 - the gRPC method name
        name = request.model_spec.name
        if name == "slow":
            time.sleep(3)  # bounded: the client's deadline is 1 s
        response = predict_pb2.PredictResponse()
        if name in GRPC_REPLIES:
            response.outputs["images"].CopyFrom(GRPC_REPLIES[name])
        return response


@pytest.fixture(scope="module")
def hostile_grpc():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_HostileServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.mark.parametrize(
    "model, match",
    [
        ("huge", "declares shape [1000000, 1000000]"),
        ("negative", "invalid shape"),
        ("short", "(12 elements) but 3 values"),
        ("content", "needs 48 bytes, got 7"),
        ("baddtype", "unknown dtype"),
        ("large", "RESOURCE_EXHAUSTED"),
        ("slow", "DEADLINE_EXCEEDED"),
    ],
)
def test_malformed_or_hostile_grpc_replies_give_one_line(hostile_grpc, model, match):
    # a 1 s deadline for the slow server only: on a busy 2-core machine an instant bad reply
    # once took over 1 s (DEADLINE_EXCEEDED instead of the checked error)
    timeout = 1.0 if model == "slow" else 10.0
    client = GrpcClient(hostile_grpc, timeout=timeout, max_response_bytes=100_000)
    try:
        _one_line_error(lambda: client.predict(model, {"seed": SEEDS}), match, within=timeout + 1.5)
    finally:
        client.close()
