"""Clients for models served by tensorflow_model_server, and a command line.

(Exports and TF Serving's `models.config` are written by `gen_keras.export`.)

- `rest.RestClient`: TF Serving's REST API (`instances` row format or `inputs` columnar).
- `grpc_client.GrpcClient`: PredictionService over gRPC (needs the `serving` extra,
  `tensorflow-serving-api`).
- `cli`: `python -m gen_keras.serving.cli sample --model=vae --n=16 --out=grid.png`.
"""

# Serving constants that need no TensorFlow, so the command line can parse and refuse its
# arguments without loading it (`gen_keras.contract` and `gen_keras.export` use these).
MAX_BATCH = 1024  # rows per request; larger requests are refused with a clear message
DOCKER_ROOT = "/models"  # where the tensorflow/serving image sees the export root mounted


class ServingError(RuntimeError):
    """A model server refused a request or sent a reply that is not TF Serving's (one line)."""


def one_line(text: str, limit: int = 300) -> str:
    """text on one line (whitespace runs collapsed), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
