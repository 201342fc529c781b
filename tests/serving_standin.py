"""An in-process stand-in for tensorflow_model_server (a test fixture, not a product).

It loads the latest version of each model under an export root exactly as the server
does (TF1 Session + `loader.load(sess, ["serve"], path)`, SignatureDefs run by tensor
name through RunCallable, which, like the server's C++ path, checks no feed shapes) and
answers TF Serving's REST API (status, metadata, predict in row and columnar formats,
`*_bytes` outputs base64-encoded, `{"error": ...}` on failure) and gRPC
PredictionService.Predict, so the clients' request building and response parsing are
exercised end to end on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from gen_keras import export
from gen_keras.serving.session import SessionModel

Served = SessionModel  # the name the tests use


class RequestError(Exception):
    def __init__(self, code: int, grpc_code, message: str):
        super().__init__(message)
        self.code, self.grpc_code = code, grpc_code


class StandIn:
    """StandIn(export_root).start() -> (rest_port, grpc_port); .stop() when done."""

    def __init__(self, export_root: str):
        self.models, self._callables = {}, {}
        for name in export.exported_models(export_root):
            version = export.versions(os.path.join(export_root, name))[-1]
            self.models[name] = (version, Served(os.path.join(export_root, name, str(version))))

    # -- the core both protocols share --------------------------------------------------

    def _model(self, name: str, version: int | None):
        if name not in self.models or (version and version != self.models[name][0]):
            which = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise RequestError(
                404, grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {which}"
            )
        return self.models[name]

    def predict(self, name, version, signature, inputs: dict) -> tuple[int, dict]:
        version, served = self._model(name, version)
        signature = signature or "serving_default"
        if signature not in served.signatures:
            raise RequestError(
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{signature}" not found in signature def',
            )
        sig = served.signatures[signature]
        if set(inputs) != set(sig.inputs):
            raise RequestError(
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"inputs {sorted(inputs)} do not match the signature's {sorted(sig.inputs)}",
            )
        feed = {}
        for key, value in inputs.items():
            dtype = tf.dtypes.as_dtype(sig.inputs[key].dtype).as_numpy_dtype
            feed[sig.inputs[key].name] = np.asarray(value, dtype=dtype)
        try:
            out = self._callable(name, signature, served, sorted(feed))(feed)
        except (tf.errors.OpError, ValueError) as e:
            raise RequestError(400, grpc.StatusCode.INVALID_ARGUMENT, _op_message(e)) from None
        return version, out

    def _callable(self, name, signature, served, feeds):
        """feed dict -> {output: ndarray} via Session._make_callable_from_options, cached."""
        key = (name, signature, tuple(feeds))
        if key not in self._callables:
            sig = served.signatures[signature]
            fetches = sorted(sig.outputs)
            options = config_pb2.CallableOptions()
            options.feed.extend(feeds)
            options.fetch.extend(sig.outputs[k].name for k in fetches)
            fn = served.sess._make_callable_from_options(options)
            self._callables[key] = lambda feed: dict(
                zip(fetches, fn(*[feed[k] for k in feeds]), strict=True)
            )
        return self._callables[key]

    def metadata(self, name, version) -> dict:
        version, served = self._model(name, version)
        sigs = {k: json_format.MessageToDict(v) for k, v in served.signatures.items()}
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {
                "signature_def": {
                    "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                    "signature_def": sigs,
                }
            },
        }

    # -- REST ---------------------------------------------------------------------------

    def _rest(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata|:predict)?", path)
        if not match:
            return 404, {"error": f"Malformed request: {method} {path}"}
        name, version, verb = match.groups()
        version = int(version) if version else None
        try:
            if method == "GET" and verb is None:
                v, _ = self._model(name, version)
                return 200, {
                    "model_version_status": [
                        {
                            "version": str(v),
                            "state": "AVAILABLE",
                            "status": {"error_code": "OK", "error_message": ""},
                        }
                    ]
                }
            if method == "GET" and verb == "/metadata":
                return 200, self.metadata(name, version)
            if method == "POST" and verb == ":predict":
                return self._rest_predict(name, version, json.loads(body))
        except RequestError as e:
            return e.code, {"error": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            return 400, {"error": f"JSON Parse error: {e}"}
        return 404, {"error": f"Malformed request: {method} {path}"}

    def _rest_predict(self, name, version, request: dict) -> tuple[int, dict]:
        signature = request.get("signature_name")
        served = self._model(name, version)[1]
        input_names = sorted(
            served.signatures.get(
                signature or "serving_default", served.signatures["serving_default"]
            ).inputs
        )
        if "instances" in request:
            rows = _b64_in(request["instances"])
            if rows and isinstance(rows[0], dict):
                inputs = {k: [row[k] for row in rows] for k in rows[0]}
            else:
                inputs = {input_names[0]: rows}
        elif "inputs" in request:
            cols = _b64_in(request["inputs"])
            inputs = cols if isinstance(cols, dict) else {input_names[0]: cols}
        else:
            raise RequestError(400, None, "Missing 'instances' or 'inputs' key")
        _, out = self.predict(name, version, signature, inputs)
        encoded = {k: _b64_out(k, v) for k, v in out.items()}
        if "instances" in request:
            n = len(next(iter(out.values())))
            if len(encoded) == 1:
                return 200, {"predictions": next(iter(encoded.values()))}
            return 200, {"predictions": [{k: v[i] for k, v in encoded.items()} for i in range(n)]}
        if len(encoded) == 1:
            return 200, {"outputs": next(iter(encoded.values()))}
        return 200, {"outputs": encoded}

    # -- gRPC ---------------------------------------------------------------------------

    def _grpc_servicer(self):
        standin = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 - the gRPC method name
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                version = request.model_spec.version.value or None
                try:
                    v, out = standin.predict(
                        request.model_spec.name, version, request.model_spec.signature_name, inputs
                    )
                except RequestError as e:
                    context.abort(e.grpc_code, str(e))
                response = predict_pb2.PredictResponse()
                response.model_spec.name = request.model_spec.name
                response.model_spec.version.value = v
                for k, value in out.items():
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(value))
                return response

            def GetModelMetadata(self, request, context):  # noqa: N802
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = request.model_spec.name
                return response

        return Servicer()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> tuple[int, int]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._reply(*standin._rest("GET", self.path, b""))

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                self._reply(*standin._rest("POST", self.path, self.rfile.read(length)))

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            self._grpc_servicer(), self.grpc
        )
        grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.grpc.start()
        return self.http.server_address[1], grpc_port

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.grpc.stop(grace=None)
        for _, served in self.models.values():
            served.close()


def _b64_in(value):
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _b64_in(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_b64_in(v) for v in value]
    return value


def _b64_out(name: str, value: np.ndarray):
    if name.endswith("_bytes"):
        return [{"b64": base64.b64encode(v).decode()} for v in value.ravel()]
    return value.tolist()


def _op_message(error) -> str:
    """The op's own message, as the model server reports it (no graph-execution preamble)."""
    lines = getattr(error, "message", str(error)).splitlines()
    keep = [
        line
        for line in lines
        if line.strip() and line != "Graph execution error:" and not line.lstrip().startswith("[[")
    ]
    return " ".join(keep)
