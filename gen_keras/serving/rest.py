"""A client for TF Serving's REST API (`tensorflow_model_server --rest_api_port`, 8501).

Requests use TF Serving's JSON formats: row (`{"instances": [{name: value}, ...]}`) or
columnar (`{"inputs": {name: value}}`); outputs named `*_bytes` come back base64-encoded
(`{"b64": ...}`) and are decoded to bytes. Inputs and outputs are numpy arrays, batch-major.

The reply is not trusted: `timeout` bounds the whole exchange (connect, a slowly dripped
reply included), `max_response_bytes` bounds its size, and anything that is not the JSON
TF Serving sends (not JSON, missing keys, ragged or non-numeric arrays, deep nesting, bad
base64) raises `ServingError` with one line.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import socket
import threading
import time
import urllib.parse

import numpy as np

from gen_keras.serving import ServingError, one_line

MAX_RESPONSE_BYTES = 32 * 2**20  # a reply larger than this is refused (max_response_bytes)
_CHUNK = 2**16


class _Malformed(ValueError):
    """The reply is not what TF Serving sends."""


def _decode(value, depth: int = 0):
    if depth > 64:
        raise _Malformed("nested deeper than any tensor")
    if isinstance(value, dict) and set(value) == {"b64"}:
        if not isinstance(value["b64"], str):
            raise _Malformed("a b64 value is not a string")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise _Malformed("a b64 value is not base64") from None
    if isinstance(value, dict):
        return {k: _decode(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, depth + 1) for v in value]
    return value


def _array(values, name: str) -> np.ndarray:
    if name.endswith("_bytes"):
        if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
            raise _Malformed(f"output {name!r} is not a list of base64 strings")
        return np.array(values, dtype=object)
    try:
        array = np.asarray(values)
    except ValueError:
        raise _Malformed(f"output {name!r} is ragged (rows of different lengths)") from None
    if array.dtype.kind not in "biuf":
        raise _Malformed(f"output {name!r} is not numeric (got {array.dtype} values)")
    return array


def _shutdown(connection) -> None:
    """Unblocks a read in progress (called by the deadline timer)."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class RestClient:
    """client = RestClient("http://localhost:8501"); client.predict("vae", {"seed": seeds}).

    timeout: seconds for each request as a whole; max_response_bytes: the largest reply
    accepted.
    """

    def __init__(
        self,
        url: str = "http://localhost:8501",
        timeout: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServingError(f"{url!r} is not an http(s)://host:port URL")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._outputs: dict[tuple, list[str]] = {}

    def _model_url(self, model: str, version: int | None) -> str:
        name = urllib.parse.quote(model, safe="")
        return f"{self.url}/v1/models/{name}" + (f"/versions/{int(version)}" if version else "")

    def _exchange(self, url: str, data: bytes | None) -> tuple[int, bytes]:
        """(status, body) within self.timeout in all, refusing bodies over the size cap."""
        parts = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        deadline = time.monotonic() + self.timeout
        connection = cls(parts.hostname, parts.port, timeout=self.timeout)
        timer = threading.Timer(self.timeout, _shutdown, args=(connection,))
        timer.daemon = True
        timer.start()
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request(
                "POST" if data is not None else "GET",
                path,
                body=data,
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise _TooLarge(int(declared))
            chunks, size = [], 0
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise _TooLarge(size)
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError
            if time.monotonic() > deadline:
                raise TimeoutError
            return response.status, b"".join(chunks)
        except _TooLarge as e:
            raise ServingError(
                f"{url}: reply larger than max_response_bytes={self.max_response_bytes} "
                f"({e.size} bytes or more)"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            if time.monotonic() >= deadline - 1e-3 or isinstance(e, TimeoutError):
                raise ServingError(
                    f"{url}: no complete reply within timeout={self.timeout:g}s"
                ) from None
            raise ServingError(
                f"{url}: cannot reach the model server ({one_line(str(e) or type(e).__name__)})"
            ) from None
        finally:
            timer.cancel()
            connection.close()

    def _call(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        status, raw = self._exchange(url, data)
        try:
            reply = json.loads(raw)
        except (ValueError, RecursionError):
            reply = None
        if status >= 400:
            message = reply.get("error") if isinstance(reply, dict) else None
            if not isinstance(message, str):
                message = raw[:200].decode("utf-8", "replace") or http.client.responses.get(
                    status, ""
                )
            raise ServingError(f"{url}: HTTP {status}: {one_line(message)}")
        if not isinstance(reply, dict):
            raise ServingError(f"{url}: the reply is not a JSON object: {one_line(repr(raw[:80]))}")
        return reply

    def status(self, model: str, version: int | None = None) -> dict:
        """GetModelStatusResponse as JSON: {"model_version_status": [...]}."""
        return self._call(self._model_url(model, version))

    def metadata(self, model: str, version: int | None = None) -> dict:
        """{signature name: SignatureDef as JSON} of the served version."""
        url = self._model_url(model, version) + "/metadata"
        response = self._call(url)
        try:
            signatures = response["metadata"]["signature_def"]["signature_def"]
        except (KeyError, TypeError):
            raise ServingError(f"{url}: the reply has no metadata.signature_def") from None
        if not isinstance(signatures, dict):
            raise ServingError(f"{url}: metadata.signature_def is not a JSON object")
        return signatures

    def output_names(self, model: str, signature: str, version: int | None = None) -> list[str]:
        key = (model, signature, version)
        if key not in self._outputs:
            try:
                self._outputs[key] = sorted(self.metadata(model, version)[signature]["outputs"])
            except (KeyError, TypeError):
                raise ServingError(
                    f"{model}: the server's metadata lists no outputs for {signature!r}"
                ) from None
        return self._outputs[key]

    def predict(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        signature: str = "serving_default",
        version: int | None = None,
        row_format: bool = True,
    ) -> dict[str, np.ndarray]:
        """Runs one signature; returns its named outputs as numpy arrays."""
        inputs = {k: np.asarray(v) for k, v in inputs.items()}
        if row_format:
            n = len(next(iter(inputs.values())))
            body = {"instances": [{k: v[i].tolist() for k, v in inputs.items()} for i in range(n)]}
        else:
            body = {"inputs": {k: v.tolist() for k, v in inputs.items()}}
        body["signature_name"] = signature
        url = self._model_url(model, version) + ":predict"
        response = self._call(url, body)
        key = "predictions" if row_format else "outputs"
        try:
            if key not in response:
                raise _Malformed(f"the reply has no {key!r}")
            result = _decode(response[key])
            if row_format and isinstance(result, list) and result and isinstance(result[0], dict):
                names = set(result[0])
                if not all(isinstance(row, dict) and set(row) == names for row in result):
                    raise _Malformed("its rows name different outputs")
                return {k: _array([row[k] for row in result], k) for k in result[0]}
            if isinstance(result, dict):
                return {k: _array(v, k) for k, v in result.items()}
            if not isinstance(result, list):
                raise _Malformed(f"{key!r} is neither a list nor an object")
            (name,) = self.output_names(model, signature, version)  # a single output: unnamed
            return {name: _array(result, name)}
        except _Malformed as e:
            raise ServingError(f"{url}: malformed reply: {e}") from None
        except ValueError:  # more than one output name for an unnamed output
            raise ServingError(f"{url}: malformed reply: unnamed outputs") from None


class _TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size
