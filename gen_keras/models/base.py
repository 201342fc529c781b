"""What the training harness, Keras `fit`, summaries and export ask of every model family.

A family model is a `keras.Model` built from a `DataSpec` (what the images are) and its
family's frozen `Config` dataclass. It declares its network, its objective
(`train_step` / `test_step`, also run by plain `model.fit` / `model.evaluate`), a per-batch
score for evaluation over a split (`score_batch`), pictures (`image_summaries`) and its
serving signatures. Looping over splits, writing pictures, scoring samples and loading runs
belong to the harness (`gen_keras.train`) and callbacks (`gen_keras.callbacks`).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from gen_keras import optimizers
from gen_keras.config import check, from_dict
from gen_keras.data import DataSpec
from gen_keras.distributions import bits_per_dim


def replica_mean(per_example, count: int | None = None) -> tf.Tensor:
    """Mean over the local batch, divided by the replica count.

    Keras optimizers sum gradients over replicas, so each replica's loss is scaled by
    1/num_replicas; with one replica this is the plain mean. With `count`, per_example is
    a chunk of a local batch of `count` examples: its sum / count, so that the chunks'
    losses (and gradients) add up to the batch's.
    """
    replicas = tf.distribute.get_replica_context()
    n = replicas.num_replicas_in_sync if replicas is not None else 1
    if count is None:
        return tf.reduce_mean(per_example) / n
    return tf.reduce_sum(per_example) / (count * n)


def _add(a, b):
    """The sum of two gradients of one variable: dense, or IndexedSlices (their rows
    concatenated, as TensorFlow aggregates them); None where the variable got none."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(
            tf.concat([a.values, b.values], 0), tf.concat([a.indices, b.indices], 0), a.dense_shape
        )
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def batch_gradients(variables, objective, args, chunk: int = 0, axes=None):
    """Gradients of replica_mean(-objective) over a local batch, and the per-example values.

    objective(*args) -> a tuple of per-example tensors [n], the first the one maximised
    (the rest: metrics). args are tensors or None, split along `axes` (default 0 each);
    the batch size n is args[0]'s first dimension. With `chunk` (TrainConfig.micro_batch)
    other than 0 or n, the batch runs in chunks of `chunk` examples whose gradients are
    summed: the same update with smaller tensors. Returns (gradients, per-example tuple).
    """
    n = args[0].shape[0]
    if not chunk or n == chunk:
        with tf.GradientTape() as tape:
            values = objective(*args)
            loss = replica_mean(-values[0])
        return tape.gradient(loss, variables), values
    check(
        n is not None and n % chunk == 0,
        f"micro_batch={chunk} must divide each replica's batch ({n} images)",
    )
    k, axes = n // chunk, axes or [0] * len(args)
    parts = [
        [None] * k if a is None else tf.split(a, k, axis)
        for a, axis in zip(args, axes, strict=True)
    ]
    grads, values = None, []
    for chunk_args in zip(*parts, strict=True):
        with tf.GradientTape() as tape:
            values.append(objective(*chunk_args))
            loss = replica_mean(-values[-1][0], count=n)
        part = tape.gradient(loss, variables)
        grads = part if grads is None else list(map(_add, grads, part))
    return grads, tuple(tf.concat(v, 0) for v in zip(*values, strict=True))


def classification_scores(logits, label) -> dict:
    """Per example [B]: 1.0 where the most likely class is `label`; cross-entropy in nats."""
    pred = tf.argmax(logits, -1, output_type=tf.int32)
    return {
        "accuracy": tf.cast(tf.equal(pred, label), tf.float32),
        "nll": tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits),
    }


def with_error_count(means: dict) -> dict:
    """Adds "errors" (misclassified examples) to split means with accuracy and a count."""
    means["errors"] = round((1.0 - means["accuracy"]) * means["eval_examples"])
    return means


def dummy_batch(spec: DataSpec, n: int = 2) -> dict:
    """A batch of zeros {"image": [n, H, W, C], "label": [n]} that builds every layer."""
    return {"image": tf.zeros([n, *spec.shape]), "label": tf.zeros([n], tf.int32)}


class GenerativeModel(keras.Model):
    """A keras.Model that `fit`, the harness, summaries, checkpoints and export all accept.

    Batches are dicts {"image": float32 [B, H, W, C] in model space, "label": int32 [B]} and
    optionally "seed": int32 [2]. The harness supplies a stateless seed per step and
    replica (exact resume); without one (plain `model.fit`) a step draws its seed from the
    model's `keras.random.SeedGenerator`, whose state is a model variable (checkpointed and
    saved). `train_step` / `test_step` return the trackers' results and track "loss".
    """

    family = "base"
    config_class: type = object  # the family's Config dataclass (set by every family)
    learning_rate = 1e-3  # the default of `compile()`

    def __init__(self, spec, config, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.spec = DataSpec.from_json(spec) if isinstance(spec, dict) else spec
        if isinstance(config, dict):
            config = from_dict(self.config_class, config)
        self.config = config
        self.seed = seed
        check(
            self.spec.num_classes > 0 or not getattr(config, "conditional", False),
            "conditional=True needs class labels, and this dataset has none (num_classes=0): "
            "train an unconditional model",
        )
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")

    # -- Keras serialization (.keras files) ------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "spec": self.spec.to_json(),
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_build_config(self):
        return {"built": True}

    def build_from_config(self, config):
        if config.get("built"):
            self.build_for_training(dummy_batch(self.spec), build_optimizers=False)

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        for optimizer, variables in self.optimizer_variables():
            optimizer.build(variables)

    # -- training --------------------------------------------------------------------------

    def default_optimizer(self, learning_rate: float) -> keras.optimizers.Optimizer:
        return optimizers.Adam(learning_rate)  # Keras's Adam, one fused kernel per variable

    def compile(self, optimizer=None, *, learning_rate: float | None = None, **kwargs):
        """Keras compile with the family's default optimizer (Adam) and learning rate."""
        if optimizer is None:
            optimizer = self.default_optimizer(learning_rate or self.learning_rate)
        super().compile(optimizer=optimizer, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        """Keras fit. A tf.data.Dataset (e.g. `Split.dataset`) shuffles itself, so `shuffle`
        defaults to False for one: with Keras's True, Keras 3.15 warns on every such call."""
        if isinstance(x, tf.data.Dataset) and not args:
            kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, **kwargs)

    def step_seed(self, data) -> tf.Tensor:
        """The batch's int32 [2] seed, or the next draw of the model's seed generator."""
        if "seed" in data:
            return tf.cast(data["seed"], tf.int32)
        return tf.cast(self.seed_generator.next(), tf.int32)

    def label_of(self, data, n: int | None = None):
        """The batch's labels (its first n) for a conditional model, else None."""
        if not getattr(self.config, "conditional", False):
            return None
        return data["label"] if n is None else data["label"][:n]

    def labels_for(self, n: int):
        """Class-balanced labels 0, 1, ... int32 [n] for a conditional model's pictures."""
        if not getattr(self.config, "conditional", False):
            return None
        return tf.range(n, dtype=tf.int32) % self.spec.num_classes

    def track(self, values: dict) -> dict:
        """Updates the trackers named in values; returns every tracker's result."""
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def optimizer_variables(self):
        """(optimizer, variables) pairs to build before the first compiled step."""
        return [(self.optimizer, self.trainable_variables)]

    def build_for_training(self, batch, build_optimizers: bool = True) -> None:
        """Creates every layer and optimizer variable (so checkpoints can restore into them)."""
        batch = dict(batch, seed=tf.constant([0, 0], tf.int32))
        self.test_step(batch)
        self.built = True
        for metric in self.metrics:
            metric.reset_state()
        if build_optimizers:
            for optimizer, variables in self.optimizer_variables():
                optimizer.build(variables)

    # -- evaluation, pictures, serving (looped and written by the harness/callbacks) --------

    def score_batch(self, data, seed) -> dict:
        """{name: float32 [B]} per-example figures of one eval batch; the harness averages
        them over a split (e.g. exact NLL, an IWAE bound, accuracy). {} by default."""
        del data, seed
        return {}

    def eval_bytes_per_example(self) -> int:
        """Peak activation bytes of `score_batch` per example (0: small, any batch fits)."""
        return 0

    def summarize_scores(self, means: dict) -> dict:
        """Means of `score_batch` over a split -> the reported figures (adds derived ones)."""
        if "nll_nats" in means:
            means["nll_bits_per_dim"] = float(bits_per_dim(means["nll_nats"], self.spec.num_dims))
        return means

    def image_summaries(self, batch, seed) -> dict:
        """{name: float [N, H, W, C] in [0, 1]} pictures for TensorBoard; `samples` first."""
        return {}

    def serving_functions(self) -> dict:
        """{signature name: tf.function with an input_signature}; the first is the default."""
        raise NotImplementedError

    def to_unit(self, x):
        """Model-space images -> [0, 1] floats for pictures."""
        if self.spec.mode == "uint8":
            return x / 255.0
        if self.spec.mode == "float_symmetric":
            return (x + 1.0) / 2.0
        return x


class Functions:
    """tf.functions a model keeps for pictures and sampling, out of sight of Keras tracking,
    checkpoints and exports (a plain holder); one trace per name, not one per epoch."""

    def __init__(self):
        self._functions = {}

    def get(self, name: str, fn, **kwargs):
        if name not in self._functions:
            self._functions[name] = tf.function(fn, **kwargs)
        return self._functions[name]
