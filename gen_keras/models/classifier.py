"""Image classifier: the supervised model that encoders initialise, and the FID/KID feature net.

    trunk:    images in [0, 1] -> h                  (convolutions; see `arch`)
    features: f = relu(W_f h + b_f)                  (or f = h when `features=0`)
    logits:   l = W_l dropout(f) + b_l               p(y | x) = softmax(l)
    loss = -log p(y | x), the cross-entropy in nats per image

Two trunks:
- `convnet` (the default, the feature network for FID/KID): two 3x3 conv + 2x2 max-pool
  blocks (`filters`, 2 x `filters` channels), flattened; `features` = the 128-unit ReLU
  layer named "features" that feeds the logits (the Keras MNIST convnet example's layout
  plus that layer). 99.24% MNIST test accuracy after `python -m trainers.classifier`.
- `encoder`: exactly the convolutional encoder of `models.autoencoder` and `models.vae`
  (two stride-2 3x3 convs with `filters` and 2 x `filters` channels, flattened, then a
  linear `code` layer of `latent_dim` units), so those encoders' weights can initialise it
  (`gen_keras.transfer`). `freeze_trunk` trains only the layers after the trunk: with
  `features=0` that is a linear probe of the code.

Networks see images in [0, 1] whatever the data mode (`to_unit`), so features of images from
any family (e.g. GAN samples after their own `to_unit`) are comparable. Training moves each
image by up to `shift` pixels (random translations) and drops features (`dropout`), both
drawn from the step's stateless seed; evaluation, `features` and exports use neither.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from gen_keras import contract, rng
from gen_keras.config import check, check_fields, check_positive, hparam
from gen_keras.models.base import (
    GenerativeModel,
    classification_scores,
    replica_mean,
    with_error_count,
)
from gen_keras.models.networks import convnet_trunk, encoder_trunk


@dataclasses.dataclass(frozen=True)
class Config:
    """Classifier architecture and its initialisation."""

    arch: str = hparam(
        "convnet",
        "Trunk: convnet (pooling, the FID net) or encoder (the AE/VAE encoder).",
        ("convnet", "encoder"),
    )
    filters: int = hparam(32, "Channels of the first conv (the second has 2x).")
    latent_dim: int = hparam(16, "arch=encoder: units of the linear code layer (the z).")
    features: int = hparam(128, "Units of the ReLU feature layer (0: logits on the trunk).")
    dropout: float = hparam(0.5, "Dropout rate on the features, in training only.")
    shift: int = hparam(2, "Training images move by up to this many pixels (0: none).")
    init_from: str = hparam(
        "", "arch=encoder: an autoencoder or VAE run (model_dir) to initialise the trunk."
    )
    freeze_trunk: bool = hparam(False, "Train only the layers after the trunk (linear probe).")

    def __post_init__(self):
        check_fields(self)
        check_positive("filters", self.filters)
        check_positive("latent_dim", self.latent_dim)
        check(self.features >= 0, f"features={self.features} must be >= 0 (0: no feature layer)")
        check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        check(self.shift >= 0, f"shift={self.shift} must be >= 0 (0: no shifts)")
        check(
            self.arch == "encoder" or not (self.init_from or self.freeze_trunk),
            f"init_from={self.init_from!r} and freeze_trunk={self.freeze_trunk} need "
            f"arch='encoder' (got arch={self.arch!r})",
        )
        check(
            self.arch == "encoder" or self.features > 0,
            "arch='convnet' needs features > 0: its feature layer is the FID feature layer",
        )


def small() -> Config:
    """A seconds-to-train variant for tests."""
    return Config(filters=8, features=32, dropout=0.25, shift=0)


def reproduce() -> Config:
    """The FID feature network: the default convnet (>= 99.0% MNIST test accuracy)."""
    return Config()


def probe(latent_dim: int, filters: int, init_from: str = "", freeze_trunk: bool = False):
    """The encoder-shaped classifier with logits directly on the code (a linear head)."""
    return Config(
        arch="encoder",
        filters=filters,
        latent_dim=latent_dim,
        features=0,
        dropout=0.0,
        shift=0,
        init_from=init_from,
        freeze_trunk=freeze_trunk,
    )


def random_shift(x, max_shift: int, seed):
    """Moves each image [B, H, W, C] by its own integer (dy, dx) in [-max_shift, max_shift],
    filling with zeros; the offsets come from the stateless seed int32 [2]."""
    shape = tf.shape(x)
    offsets = tf.random.stateless_uniform(
        [shape[0], 2], seed, minval=-max_shift, maxval=max_shift + 1, dtype=tf.int32
    )

    def matrices(n, offset):  # [B, n, n]: row i picks source i - offset (zero if outside)
        source = tf.range(n)[None, :] - offset[:, None]
        return tf.one_hot(source, n, dtype=x.dtype)

    rows, cols = matrices(shape[1], offsets[:, 0]), matrices(shape[2], offsets[:, 1])
    return tf.einsum("bij,bjkc,blk->bilc", rows, x, cols)


@keras.saving.register_keras_serializable(package="gen_keras")
class Classifier(GenerativeModel):
    """trunk -> feature layer -> logits; cross-entropy loss; accuracy tracked."""

    family = "classifier"
    config_class = Config

    def __init__(self, spec, config: Config, **kwargs):
        super().__init__(spec, config, **kwargs)
        spec, config = self.spec, self.config
        check(spec.num_classes > 0, "a classifier needs class labels; this dataset has none")
        h, w, _ = spec.shape
        if config.arch == "encoder":
            check(
                h % 4 == 0 and w % 4 == 0,
                f"arch='encoder' needs height and width divisible by 4, got {spec.shape}",
            )
            self.trunk = encoder_trunk(config.filters, config.latent_dim)
        else:
            check(h >= 4 and w >= 4, f"arch='convnet' needs images at least 4x4, got {spec.shape}")
            self.trunk = convnet_trunk(config.filters)
        self.trunk.trainable = not config.freeze_trunk
        self.feature_layer = (
            keras.layers.Dense(config.features, activation="relu", name="features")
            if config.features
            else None
        )
        self.logit_layer = keras.layers.Dense(spec.num_classes, name="logits")
        self.trackers = {name: keras.metrics.Mean(name) for name in ("loss", "accuracy")}

    # -- the network ---------------------------------------------------------------------

    def features(self, images):
        """images float32 [B, H, W, C] in [0, 1] -> features float32 [B, F].

        F = `features` units of the ReLU layer named "features" (the input of the logits
        layer); with `features=0`, the trunk output (the code). The FID/KID features.
        """
        h = self.trunk(images)
        return self.feature_layer(h) if self.feature_layer is not None else h

    def logits(self, images):
        """images float32 [B, H, W, C] in [0, 1] -> logits float32 [B, num_classes]."""
        return self.logit_layer(self.features(images))

    def call(self, x):
        """Model-space images [B, H, W, C] -> logits [B, num_classes]."""
        return self.logits(self.to_unit(x))

    def _logits_and_features(self, x, seed=None):
        """Model-space x -> (logits, features); a seed adds the training shifts and dropout."""
        u = self.to_unit(x)
        if seed is not None and self.config.shift:
            u = random_shift(u, self.config.shift, rng.fold_in(seed, 1))
        f = self.features(u)
        if seed is not None and self.config.dropout > 0:
            f = tf.nn.experimental.stateless_dropout(f, self.config.dropout, seed=seed)
        return self.logit_layer(f), f

    # -- training ------------------------------------------------------------------------

    def _track(self, label, logits):
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), label), tf.float32)
        return self.track({"loss": nll, "accuracy": correct})

    def train_step(self, data):
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            logits, _ = self._logits_and_features(data["image"], self.step_seed(data))
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(data["label"], logits)
            loss = replica_mean(nll)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return self._track(data["label"], logits)

    def test_step(self, data):
        return self._track(data["label"], self(data["image"]))

    def score_batch(self, data, seed) -> dict:
        """Per image [B]: 1.0 where the most likely class is right; cross-entropy in nats."""
        del seed
        return classification_scores(self(data["image"]), data["label"])

    def summarize_scores(self, means: dict) -> dict:
        return with_error_count(means)

    # -- serving -------------------------------------------------------------------------

    def serving_functions(self) -> dict:
        spec = self.spec

        def classify(images):
            images = contract.check_images(images, spec)
            logits, features = self._logits_and_features(spec.to_model(images))
            return {"logits": logits, "features": features}

        return {"classify": contract.signature(classify, contract.image_spec(spec))}


def build(config: Config, spec, learning_rate: float | None = None) -> Classifier:
    """The classifier, compiled; `config.init_from` is applied by the harness
    (`gen_keras.transfer.warm_start`), which reads runs from disk."""
    model = Classifier(spec, config)
    model.compile(learning_rate=learning_rate)
    return model
