"""Clients for models served by tensorflow_model_server, and a command line.

(Exports and TF Serving's `models.config` are written by `gen_keras.export`.)

- `rest.RestClient`: TF Serving's REST API (`instances` row format or `inputs` columnar).
- `grpc_client.GrpcClient`: PredictionService over gRPC (needs the `serving` extra,
  `tensorflow-serving-api`).
- `cli`: `python -m gen_keras.serving.cli sample --model=vae --n=16 --out=grid.png`.

Only the gRPC client loads TensorFlow (its protos need it), on first use: the REST client and
the command line start without it. This package imports nothing heavier than numpy.
"""

MAX_BATCH = 1024  # rows per request: every signature refuses more (gen_keras.contract)


class ServingError(RuntimeError):
    """A model server refused a request or sent a reply that is not TF Serving's (one line)."""


def one_line(text: str, limit: int = 300) -> str:
    """text on one line (whitespace runs collapsed), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
