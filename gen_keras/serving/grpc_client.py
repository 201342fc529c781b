"""A client for TF Serving's gRPC PredictionService (port 8500).

Needs `tensorflow-serving-api` (the `serving` extra): `pip install 'gen-keras[serving]'`.

The reply is not trusted: `timeout` is the call's deadline, `max_response_bytes` caps the
message gRPC accepts, and each output tensor's declared shape is checked against its
values and the cap before numpy allocates it (a TensorProto of one value may declare
10^12 elements). Anything else than TF Serving's reply raises `ServingError`, one line.
"""

from __future__ import annotations

import math

import numpy as np

from gen_keras.serving import ServingError, one_line

MAX_RESPONSE_BYTES = 32 * 2**20  # a reply larger than this is refused (max_response_bytes)


def _apis():
    """The optional gRPC modules, loaded on first use: TF Serving's protos import TensorFlow,
    which the REST client and the command line otherwise never load."""
    try:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError:
        raise ServingError(
            "the gRPC client needs tensorflow-serving-api: pip install 'gen-keras[serving]'"
        ) from None
    return grpc, tf, predict_pb2, prediction_service_pb2_grpc


class GrpcClient:
    """client = GrpcClient("localhost:8500"); client.predict("vae", {"seed": seeds})."""

    def __init__(
        self,
        target: str = "localhost:8500",
        timeout: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        grpc, self._tf, self._predict_pb2, service = _apis()
        self._grpc = grpc
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", max_response_bytes)]
        )
        self.stub = service.PredictionServiceStub(self.channel)
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes

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
            request.inputs[name].CopyFrom(self._tf.make_tensor_proto(np.asarray(value)))
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            raise ServingError(
                f"{model}/{signature}: {e.code().name}: {one_line(e.details() or '')}"
            ) from None
        return {
            name: _ndarray(
                self._tf, f"{model}/{signature}: output {name!r}", proto, self.max_response_bytes
            )
            for name, proto in response.outputs.items()
        }

    def close(self) -> None:
        self.channel.close()


def _ndarray(tf, what: str, proto, max_bytes: int) -> np.ndarray:
    """tf.make_ndarray(proto) after checking its declared shape against its values and the
    size cap (ServingError otherwise)."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise ServingError(f"{what}: unknown dtype enum {proto.dtype}") from None
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims) or len(dims) > 32:
        raise ServingError(f"{what}: invalid shape {dims}")
    n = math.prod(dims)
    itemsize = 1 if dtype == tf.string else dtype.size
    if n * itemsize > max_bytes:
        raise ServingError(
            f"{what}: declares shape {dims} ({n} elements), over max_response_bytes={max_bytes}"
        )
    if proto.tensor_content:
        if len(proto.tensor_content) != n * itemsize:
            raise ServingError(
                f"{what}: shape {dims} needs {n * itemsize} bytes, got {len(proto.tensor_content)}"
            )
    else:
        count = sum(
            len(value)
            for field, value in proto.ListFields()
            if field.name.endswith("_val") and field.label == field.LABEL_REPEATED
        )
        if count not in (n, 1) and not (n == 0 and count == 0):
            raise ServingError(f"{what}: shape {dims} ({n} elements) but {count} values")
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError, tf.errors.OpError) as e:
        raise ServingError(f"{what}: malformed tensor ({one_line(str(e))})") from None
