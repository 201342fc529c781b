"""Clients for models served by tensorflow_model_server, and a command line.

(Exports and TF Serving's `models.config` are written by `gen_keras.export`.)

- `rest.RestClient`: TF Serving's REST API (`instances` row format or `inputs` columnar).
- `grpc_client.GrpcClient`: PredictionService over gRPC (needs the `serving` extra,
  `tensorflow-serving-api`).
- `cli`: `python -m gen_keras.serving.cli sample --model=vae --n=16 --out=grid.png`.
"""


class ServingError(RuntimeError):
    """A model server refused a request; the message is the server's."""
