"""A client for TF Serving's REST API (`tensorflow_model_server --rest_api_port`, 8501).

Requests use TF Serving's JSON formats: row (`{"instances": [{name: value}, ...]}`) or
columnar (`{"inputs": {name: value}}`); outputs named `*_bytes` come back base64-encoded
(`{"b64": ...}`) and are decoded to bytes. Inputs and outputs are numpy arrays, batch-major.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np

from gen_keras.serving import ServingError


def _decode(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _array(values, name: str) -> np.ndarray:
    if name.endswith("_bytes"):
        return np.array(values, dtype=object)
    return np.asarray(values)


class RestClient:
    """client = RestClient("http://localhost:8501"); client.predict("vae", {"seed": seeds})."""

    def __init__(self, url: str = "http://localhost:8501", timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._outputs: dict[tuple, list[str]] = {}

    def _model_url(self, model: str, version: int | None) -> str:
        return f"{self.url}/v1/models/{model}" + (f"/versions/{version}" if version else "")

    def _call(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url,
            data=data,
            method="POST" if data else "GET",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", str(e))
            except ValueError:
                message = str(e)
            raise ServingError(f"{url}: HTTP {e.code}: {message}") from None
        except urllib.error.URLError as e:
            raise ServingError(f"{url}: cannot reach the model server ({e.reason})") from None

    def status(self, model: str, version: int | None = None) -> dict:
        """GetModelStatusResponse as JSON: {"model_version_status": [...]}."""
        return self._call(self._model_url(model, version))

    def metadata(self, model: str, version: int | None = None) -> dict:
        """{signature name: SignatureDef as JSON} of the served version."""
        response = self._call(self._model_url(model, version) + "/metadata")
        return response["metadata"]["signature_def"]["signature_def"]

    def output_names(self, model: str, signature: str, version: int | None = None) -> list[str]:
        key = (model, signature, version)
        if key not in self._outputs:
            self._outputs[key] = sorted(self.metadata(model, version)[signature]["outputs"])
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
        response = self._call(self._model_url(model, version) + ":predict", body)
        result = _decode(response["predictions"] if row_format else response["outputs"])
        if row_format and result and isinstance(result[0], dict):
            return {k: _array([row[k] for row in result], k) for k in result[0]}
        if isinstance(result, dict):
            return {k: _array(v, k) for k, v in result.items()}
        (name,) = self.output_names(model, signature, version)  # a single output is unnamed
        return {name: _array(result, name)}
