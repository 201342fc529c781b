"""An export loaded the way tensorflow_model_server loads it: a TF1 Session + the SavedModel
loader with tag "serve", signatures run by their SignatureDef tensor names."""

from __future__ import annotations

import tensorflow as tf


class SessionModel:
    """model = SessionModel(path); model("sample", seed=seeds) -> {output name: ndarray}."""

    def __init__(self, path: str):
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        self.meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], path)
        self.signatures = {
            k: v for k, v in self.meta.signature_def.items() if k != "__saved_model_init_op"
        }

    def __call__(self, name: str, **inputs):
        sig = self.signatures[name]
        if set(inputs) != set(sig.inputs):
            raise ValueError(f"{name} takes {sorted(sig.inputs)}, got {sorted(inputs)}")
        feed = {sig.inputs[k].name: v for k, v in inputs.items()}
        return self.sess.run({k: v.name for k, v in sig.outputs.items()}, feed)

    def close(self) -> None:
        self.sess.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
