"""Deterministic convolutional autoencoder, optionally denoising (Vincent et al. 2008).

    z = f(c(x))        x_hat = g(z)        loss = d(x, x_hat)
    c: the identity, or a corruption of the input in training (denoising):
       mask: each pixel set to 0 with probability `noise_level`;
       gaussian: x + noise_level * N(0, 1), in [0, 1] units
    d: the reconstruction loss that matches the data mode
       bernoulli   (binary data): -log Bernoulli(x | sigmoid(g(z))), nats per image
       categorical (uint8 data):  -log Categorical-256(x | softmax(g(z))), nats per image
       mse         (float or uint8 data): mean over pixels of (sigmoid(g(z)) - x)^2, x in [0, 1]

f is the same conv encoder as the VAE's (`models.networks.encoder_trunk`: two stride-2
3x3 convs, flatten, a linear `code` layer of `latent_dim` units), so it can initialise a
classifier (`gen_keras.transfer`); g mirrors the VAE decoder. The likelihood heads are those
of `gen_keras.distributions`. Networks see images in [0, 1]; corruption noise comes from the
step's stateless seed.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from gen_keras import contract
from gen_keras.config import check, check_fields, check_positive, hparam
from gen_keras.distributions import bits_per_dim, make_head
from gen_keras.models.base import GenerativeModel, replica_mean
from gen_keras.models.networks import conv_decoder, encoder_trunk

LOSSES = ("auto", "bernoulli", "categorical", "mse")
CORRUPTIONS = ("none", "mask", "gaussian")


@dataclasses.dataclass(frozen=True)
class Config:
    """Autoencoder architecture, reconstruction loss and input corruption."""

    latent_dim: int = hparam(16, "Code (bottleneck) dimensions.")
    hidden: int = hparam(32, "Filters of the first conv (the second has 2x), as in the VAE.")
    loss: str = hparam(
        "auto",
        "Reconstruction loss (auto: bernoulli for binary, categorical for uint8, mse for float).",
        LOSSES,
    )
    corruption: str = hparam("none", "Input corruption (a denoising autoencoder).", CORRUPTIONS)
    noise_level: float = hparam(
        0.25, "mask: drop probability; gaussian: noise stddev in [0, 1] units."
    )

    def __post_init__(self):
        check_positive("latent_dim", self.latent_dim)
        check_positive("hidden", self.hidden)
        check_fields(self)
        check(
            self.corruption == "none" or self.noise_level > 0,
            f"corruption={self.corruption!r} needs noise_level > 0 (got {self.noise_level})",
        )
        check(
            self.corruption != "mask" or self.noise_level < 1,
            f"corruption='mask' needs noise_level < 1 (got {self.noise_level})",
        )


def small() -> Config:
    """A seconds-to-train variant for tests."""
    return Config(latent_dim=4, hidden=8)


def reproduce() -> Config:
    """The encoder of the features benchmark: a masking-noise denoising autoencoder."""
    return Config(latent_dim=16, hidden=32, corruption="mask", noise_level=0.25)


def loss_name(config: Config, spec) -> str:
    if config.loss != "auto":
        return config.loss
    if spec.binary:
        return "bernoulli"
    return "categorical" if spec.mode == "uint8" else "mse"


@keras.saving.register_keras_serializable(package="gen_keras")
class Autoencoder(GenerativeModel):
    """encoder (conv -> code z) and decoder (z -> reconstruction), one loss per data mode."""

    family = "autoencoder"
    config_class = Config

    def __init__(self, spec, config: Config, **kwargs):
        super().__init__(spec, config, **kwargs)
        spec, config = self.spec, self.config
        h, w, c = spec.shape
        name = loss_name(config, spec)
        check(
            (name == "bernoulli") == spec.binary or name == "mse",
            f"loss={name!r} does not fit binarization={spec.mode!r}: use bernoulli for binary "
            "data, categorical or mse for uint8, mse for float data",
        )
        check(
            name != "categorical" or spec.mode == "uint8",
            f"loss='categorical' needs binarization='uint8' (got {spec.mode!r})",
        )
        check(
            h % 4 == 0 and w % 4 == 0,
            f"the conv autoencoder needs height and width divisible by 4, got {spec.shape}",
        )
        self.loss_name = name
        self.head = None if name == "mse" else make_head(name)
        params = c if self.head is None else self.head.num_params(c)
        hid = config.hidden
        self.encoder = encoder_trunk(hid, config.latent_dim, name="encoder")
        self.decoder = conv_decoder(spec.shape, hid, params)
        names = ["loss", "mse"] + ([] if self.head is None else ["distortion", "bits_per_dim"])
        self.trackers = {n: keras.metrics.Mean(n) for n in names}

    # -- the networks --------------------------------------------------------------------

    def from_unit(self, u):
        """[0, 1] images -> model space (the inverse of `to_unit`)."""
        if self.spec.mode == "uint8":
            return u * 255.0
        if self.spec.mode == "float_symmetric":
            return u * 2.0 - 1.0
        return u

    def encode(self, x):
        """Model-space images float32 [B, H, W, C] -> codes z float32 [B, latent_dim]."""
        return self.encoder(self.to_unit(x))

    def decode_params(self, z):
        """z float32 [B, latent_dim] -> decoder output [B, H, W, P] (logits or pre-sigmoid)."""
        return self.decoder(z)

    def mean(self, params):
        """Decoder output -> the reconstruction (mean) in model space, float32 [B, H, W, C]."""
        if self.head is None:
            return self.from_unit(tf.sigmoid(params))
        return self.head.mean(params)

    def decode(self, z):
        """z float32 [B, latent_dim] -> reconstruction means in model space [B, H, W, C]."""
        return self.mean(self.decode_params(z))

    def call(self, x):
        """Model-space images -> their reconstructions (model space), without corruption."""
        return self.decode(self.encode(x))

    def corrupt(self, x, seed):
        """The denoising corruption of model-space x [B, H, W, C] with seed int32 [2]."""
        kind, level = self.config.corruption, self.config.noise_level
        if kind == "none":
            return x
        u = self.to_unit(x)
        if kind == "mask":
            u = u * tf.cast(tf.random.stateless_uniform(tf.shape(u), seed) >= level, u.dtype)
        else:
            u = u + level * tf.random.stateless_normal(tf.shape(u), seed)
        return self.from_unit(u)

    # -- the loss ------------------------------------------------------------------------

    def terms(self, x, x_in):
        """Reconstruct x from x_in: {"loss", "mse"[, "distortion"]} each float32 [B]."""
        params = self.decode_params(self.encode(x_in))
        mse = tf.reduce_mean(
            tf.square(self.to_unit(self.mean(params)) - self.to_unit(x)), axis=[1, 2, 3]
        )
        if self.head is None:
            return {"loss": mse, "mse": mse}
        distortion = -self.head.log_prob(params, x)
        return {"loss": distortion, "mse": mse, "distortion": distortion}

    def _track(self, terms):
        if "distortion" in terms:
            terms = dict(terms, bits_per_dim=bits_per_dim(terms["distortion"], self.spec.num_dims))
        return self.track(terms)

    def train_step(self, data):
        x = data["image"]
        with tf.GradientTape() as tape:
            terms = self.terms(x, self.corrupt(x, self.step_seed(data)))
            loss = replica_mean(terms["loss"])
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return self._track(terms)

    def test_step(self, data):
        return self._track(self.terms(data["image"], data["image"]))

    def score_batch(self, data, seed) -> dict:
        """Clean-input reconstruction error per image [B]: mse (and distortion in nats)."""
        del seed
        terms = self.terms(data["image"], data["image"])
        terms.pop("loss")
        return terms

    def summarize_scores(self, means: dict) -> dict:
        if "distortion" in means:
            means["bits_per_dim"] = float(bits_per_dim(means["distortion"], self.spec.num_dims))
        return means

    # -- pictures and serving ------------------------------------------------------------

    def image_summaries(self, batch, seed) -> dict:
        n = int(batch["image"].shape[0]) // 2
        x = batch["image"][:n]
        pairs = tf.stack([self.to_unit(x), self.to_unit(self(x))], 1)
        out = {"reconstructions": tf.reshape(pairs, [-1, *self.spec.shape])}
        if self.config.corruption != "none":
            noisy = self.corrupt(x, seed)
            triples = tf.stack(
                [self.to_unit(x), tf.clip_by_value(self.to_unit(noisy), 0.0, 1.0)]
                + [self.to_unit(self(noisy))],
                1,
            )
            out["denoising"] = tf.reshape(triples, [-1, *self.spec.shape])
        return out

    def _data_images(self, mean):
        """Reconstruction means -> uint8 data space (binary: the most likely pixel value)."""
        return self.spec.to_data(tf.round(mean) if self.spec.binary else mean)

    def serving_functions(self) -> dict:
        spec = self.spec

        def reconstruct(images):
            images = contract.check_images(images, spec)
            return {"images": self._data_images(self(spec.to_model(images)))}

        def encode(images):
            images = contract.check_images(images, spec)
            return {"z": self.encode(spec.to_model(images))}

        def decode(z):
            return {"images": self._data_images(self.decode(contract.check_rows("z", z)))}

        images = contract.image_spec(spec)
        z_spec = tf.TensorSpec([None, self.config.latent_dim], tf.float32, name="z")
        return {
            "reconstruct": contract.signature(reconstruct, images),
            "encode": contract.signature(encode, images),
            "decode": contract.signature(decode, z_spec),
        }


def build(config: Config, spec, learning_rate: float | None = None) -> Autoencoder:
    model = Autoencoder(spec, config)
    model.compile(learning_rate=learning_rate)
    return model
