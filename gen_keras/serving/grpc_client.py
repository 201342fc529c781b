"""A client for TF Serving's gRPC PredictionService (port 8500).

Needs `tensorflow-serving-api` (the `serving` extra): `pip install 'gen-keras[serving]'`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gen_keras.serving import ServingError


def _apis():
    try:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError:
        raise ServingError(
            "the gRPC client needs tensorflow-serving-api: pip install 'gen-keras[serving]'"
        ) from None
    return grpc, predict_pb2, prediction_service_pb2_grpc


class GrpcClient:
    """client = GrpcClient("localhost:8500"); client.predict("vae", {"seed": seeds})."""

    def __init__(self, target: str = "localhost:8500", timeout: float = 60.0):
        grpc, self._predict_pb2, service = _apis()
        self._grpc = grpc
        self.channel = grpc.insecure_channel(target)
        self.stub = service.PredictionServiceStub(self.channel)
        self.timeout = timeout

    def predict(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        signature: str = "serving_default",
        version: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs one signature; returns its named outputs as numpy arrays."""
        request = self._predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            raise ServingError(f"{model}/{signature}: {e.code().name}: {e.details()}") from None
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self.channel.close()
