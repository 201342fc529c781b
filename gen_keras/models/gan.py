"""GANs: DCGAN with the minimax or non-saturating loss, WGAN-GP, and a conditional variant.

A generator G maps noise z ~ N(0, I) (and a label y) to images; a discriminator D scores
images. With D's logits l(x) and sigmoid s:

    minimax (Goodfellow et al. 2014):   max_D E log s(l(x)) + E log(1 - s(l(G(z))))
                                        min_G E log(1 - s(l(G(z))))   (saturating)
    non_saturating (same paper, sec. 3): min_G -E log s(l(G(z)))
    wgan_gp (Gulrajani et al. 2017):    min_D E D(G(z)) - E D(x) + lambda E (|grad_x^ D(x^)| - 1)^2
                                        min_G -E D(G(z)),  x^ = eps x + (1 - eps) G(z),
                                        eps ~ U[0, 1] per example

Architecture: DCGAN (Radford et al. 2016) with strided (transposed) convolutions, batch
norm and ReLU in the generator, LeakyReLU and no batch norm in the discriminator (so the
same network is a valid WGAN-GP critic: the penalty is per example). Conditional models
(Mirza & Osindero 2014; Miyato & Koyama 2018) feed G the one-hot label beside z and use a
projection discriminator D(x, y) = psi(phi(x)) + <embed(y), phi(x)>.

One training step reads one batch of B real images and runs `n_critic` discriminator
updates, each on its own slice of B / n_critic real images with fresh noise (Gulrajani et
al.'s Algorithm 1), then one generator update on B / n_critic noise vectors. All noise is
drawn statelessly from the step's seed, so a step is a pure function of (weights, batch,
seed), under XLA too.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from gen_keras import contract, optimizers, rng
from gen_keras.config import UsageError, check, check_fields, check_positive, hparam
from gen_keras.models.base import GenerativeModel, replica_mean

LOSSES = ("minimax", "non_saturating", "wgan_gp")


@dataclasses.dataclass(frozen=True)
class Config:
    """GAN architecture, game and sample-quality evaluation."""

    loss: str = hparam("non_saturating", "The game the two players play.", LOSSES)
    latent_dim: int = hparam(64, "Dimensions of the noise z.")
    filters: int = hparam(32, "Filters: G 2f -> f -> channels, D f -> 2f.")
    conditional: bool = hparam(False, "Label-conditioned G, projection discriminator.")
    n_critic: int | None = hparam(
        None, "Discriminator updates per step (default: 5 for wgan_gp, else 1)."
    )
    gp_weight: float = hparam(10.0, "Gradient penalty weight lambda (wgan_gp).")
    leak: float = hparam(0.2, "LeakyReLU slope of the discriminator.")
    # Part of the run's identity: FID curves are only comparable under one feature network.
    classifier: str = hparam(
        "",
        "Classifier export or run dir whose features score samples (FID, KID, coverage) per "
        "epoch and at the end; empty: no sample-quality figures.",
    )
    fid_samples: int = hparam(1000, "Generated samples for the per-epoch figures.")
    final_samples: int = hparam(5000, "Generated samples for the end-of-run figures.")

    def __post_init__(self):
        check_fields(self)
        check_positive("n_critic", self.n_critic, allow_none=True)
        for name in ("latent_dim", "filters", "fid_samples", "final_samples"):
            check_positive(name, getattr(self, name))
        check(self.gp_weight >= 0, f"gp_weight={self.gp_weight} must be >= 0")
        check(self.leak >= 0, f"leak={self.leak} must be >= 0")

    @property
    def critic_steps(self) -> int:
        if self.n_critic is not None:
            return self.n_critic
        return 5 if self.loss == "wgan_gp" else 1


def small() -> Config:
    """A seconds-to-train variant for tests."""
    return Config(latent_dim=8, filters=4, fid_samples=200, final_samples=300)


def reproduce() -> Config:
    """Radford et al.'s z of 100 and 64/128 filters (their MNIST-sized DCGAN)."""
    return Config(latent_dim=100, filters=64, final_samples=10_000)


D_BATCH = 64  # rows per discriminator update in the trainers' default batch


def default_batch(config: Config) -> int:
    """The trainers' batch per step: n_critic discriminator minibatches of D_BATCH rows."""
    return D_BATCH * config.critic_steps


def check_batch(config: Config, batch_size: int, replicas: int = 1) -> None:
    """One line unless each replica's batch splits into n_critic equal minibatches."""
    n = config.critic_steps
    per = f" x {replicas} replicas" if replicas > 1 else ""
    check(
        batch_size % (n * replicas) == 0,
        f"batch_size={batch_size} is not a multiple of n_critic={n}{per}: a step splits each "
        f"replica's batch into n_critic discriminator minibatches (e.g. batch_size="
        f"{D_BATCH * n * replicas})",
    )


def adam_for(loss: str, learning_rate: float) -> optimizers.Adam:
    """Adam(lr, 0.5, 0.999) for the DCGAN losses (Radford et al.), Adam(lr, 0, 0.9) for WGAN-GP."""
    beta_1, beta_2 = (0.0, 0.9) if loss == "wgan_gp" else (0.5, 0.999)
    return optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2)


# -- the game ---------------------------------------------------------------------------


def discriminator_loss(loss: str, real, fake) -> tf.Tensor:
    """Per-example D loss from D outputs on real and fake rows, float32 [B] (no penalty).

    minimax / non_saturating: -log s(l(x)) - log(1 - s(l(G(z)))); wgan_gp: D(G(z)) - D(x).
    """
    if loss == "wgan_gp":
        return fake - real
    return tf.nn.softplus(-real) + tf.nn.softplus(fake)


def generator_loss(loss: str, fake) -> tf.Tensor:
    """Per-example G loss from D outputs on fake rows, float32 [B].

    minimax: log(1 - s(l)) = -softplus(l), whose gradient vanishes where D rejects G(z);
    non_saturating: -log s(l) = softplus(-l); wgan_gp: -D(G(z)).
    """
    if loss == "minimax":
        return -tf.nn.softplus(fake)
    if loss == "non_saturating":
        return tf.nn.softplus(-fake)
    return -fake


def interpolate(real, fake, seed):
    """x^ = eps * real + (1 - eps) * fake, eps ~ U[0, 1] one per example; returns (x^, eps [B])."""
    eps = tf.random.stateless_uniform([tf.shape(real)[0]], seed)
    e = tf.reshape(eps, [-1, 1, 1, 1])
    return e * real + (1.0 - e) * fake, eps


def gradient_penalty(critic, real, fake, seed) -> tf.Tensor:
    """(|grad_x^ critic(x^)|_2 - 1)^2 per example, float32 [B]; critic maps [B, ...] -> [B].

    The critic must treat rows independently (no batch norm), so the gradient of the sum
    of its outputs holds each row's own gradient.
    """
    x_hat, _ = interpolate(real, fake, seed)
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        scores = critic(x_hat)
    grads = tape.gradient(scores, x_hat)
    norm = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]) + 1e-12)
    return tf.square(norm - 1.0)


# -- the networks -------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="gen_keras")
class LeakyReLU(keras.layers.Layer):
    """max(x, slope * x) whose gradient reads its output, not its input (y > 0 exactly where
    x > 0 for a slope >= 0, so the gradient is the same).

    Keras's LeakyReLU after a biased conv made grappler's remapper (oneDNN on, TF 2.21) fuse
    conv, bias and activation although LeakyReluGrad still read the bias output, then abandon
    its whole pass with an E-level "remapper failed: ... exist for missing node .../BiasAdd"
    at every trace of a GAN step. With the gradient on y the pass completes; the step's speed
    did not measurably change (non_saturating default, batch 64, two rounds: 4,555 / 4,299
    against 4,519 / 4,580 img/s) and its loss is the same."""

    def __init__(self, negative_slope: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = float(negative_slope)

    def call(self, x):
        slope = self.negative_slope

        @tf.custom_gradient
        def leaky(x):
            y = tf.nn.leaky_relu(x, slope)
            return y, lambda dy: tf.raw_ops.LeakyReluGrad(gradients=dy, features=y, alpha=slope)

        return leaky(x)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


@keras.saving.register_keras_serializable(package="gen_keras")
class GAN(GenerativeModel):
    """DCGAN generator and discriminator (or critic) in one keras.Model with two optimizers."""

    family = "gan"
    config_class = Config
    learning_rate = 2e-4  # Radford et al.

    def __init__(self, spec, config: Config, **kwargs):
        super().__init__(spec, config, **kwargs)
        spec, config = self.spec, self.config
        h, w, c = spec.shape
        check(
            spec.mode in ("float_symmetric", "float"),
            f"binarization={spec.mode!r}: a GAN generates continuous pixels; use "
            "float_symmetric (tanh output, the default) or float (sigmoid output)",
        )
        check(
            h % 4 == 0 and w % 4 == 0,
            f"the DCGAN networks need height and width divisible by 4, got {spec.shape}",
        )
        f, layers = config.filters, keras.layers
        self.generator = keras.Sequential(
            [
                layers.Dense(h // 4 * w // 4 * 2 * f, use_bias=False),
                layers.BatchNormalization(momentum=0.9),
                layers.ReLU(),
                layers.Reshape((h // 4, w // 4, 2 * f)),
                layers.Conv2DTranspose(f, 4, 2, "same", use_bias=False),
                layers.BatchNormalization(momentum=0.9),
                layers.ReLU(),
                layers.Conv2DTranspose(c, 4, 2, "same"),
                layers.Activation("tanh" if spec.mode == "float_symmetric" else "sigmoid"),
            ],
            name="generator",
        )
        self.features = keras.Sequential(  # phi(x) of the discriminator
            [
                layers.Conv2D(f, 4, 2, "same"),
                LeakyReLU(config.leak),
                layers.Conv2D(2 * f, 4, 2, "same"),
                LeakyReLU(config.leak),
                layers.Flatten(),
            ],
            name="discriminator",
        )
        self.score = layers.Dense(1, name="score")  # psi
        if config.conditional:
            self.embed = layers.Embedding(
                spec.num_classes, h // 4 * w // 4 * 2 * f, name="projection"
            )
        names = ["loss", "d_loss", "g_loss", "d_real", "d_fake"]
        if config.loss == "wgan_gp":
            names += ["gradient_penalty", "wasserstein"]
        self.trackers = {name: keras.metrics.Mean(name) for name in names}

    def compile(self, d_optimizer=None, g_optimizer=None, *, learning_rate=None, **kwargs):
        """Two players, two optimizers (default: `adam_for` the loss at the family's
        learning rate); Keras' single `optimizer` stays None."""
        lr = learning_rate or self.learning_rate
        kwargs.pop("optimizer", None)
        keras.Model.compile(self, optimizer=None, **kwargs)  # not the one-optimizer default
        self.d_optimizer = d_optimizer or adam_for(self.config.loss, lr)
        self.g_optimizer = g_optimizer or adam_for(self.config.loss, lr)

    def get_compile_config(self):
        return {
            "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
            "g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
        }

    def optimizer_variables(self):
        return [
            (self.d_optimizer, self.discriminator_variables),
            (self.g_optimizer, self.generator.trainable_variables),
        ]

    @property
    def discriminator_variables(self):
        variables = self.features.trainable_variables + self.score.trainable_variables
        if self.config.conditional:
            variables += self.embed.trainable_variables
        return variables

    def generate(self, z, label=None, training=False):
        """z float32 [B, latent] (and label int32 [B]) -> model-space images [B, H, W, C]."""
        if self.config.conditional:
            z = tf.concat([z, tf.one_hot(label, self.spec.num_classes)], axis=-1)
        return self.generator(z, training=training)

    def discriminate(self, x, label=None):
        """Model-space images [B, H, W, C] (and labels) -> D's logits (critic scores) [B]."""
        phi = self.features(x)
        out = self.score(phi)[:, 0]
        if self.config.conditional:
            out += tf.reduce_sum(self.embed(label) * phi, axis=-1)
        return out

    def call(self, z, label=None):
        return self.generate(z, label)

    # -- training ----------------------------------------------------------------------

    def _noise(self, n, seed):
        return tf.random.stateless_normal([n, self.config.latent_dim], seed)

    def _discriminator_terms(self, x, label, fake, seed):
        """Per-example D loss (with the penalty), D(x), D(G(z)) and the penalty, each [B]."""
        real_out = self.discriminate(x, label)
        fake_out = self.discriminate(fake, label)
        d_loss = discriminator_loss(self.config.loss, real_out, fake_out)
        penalty = tf.zeros_like(d_loss)
        if self.config.loss == "wgan_gp":
            penalty = gradient_penalty(lambda v: self.discriminate(v, label), x, fake, seed)
            d_loss += self.config.gp_weight * penalty
        return d_loss, real_out, fake_out, penalty

    def _track(self, d_loss, g_loss, real_out, fake_out, penalty):
        wgan = self.config.loss == "wgan_gp"
        shown = (lambda v: v) if wgan else tf.sigmoid  # D(x) as a probability for DCGAN
        values = {
            "loss": d_loss,
            "d_loss": d_loss,
            "d_real": shown(real_out),
            "d_fake": shown(fake_out),
        }
        if g_loss is not None:
            values["g_loss"] = g_loss
        if wgan:
            values["gradient_penalty"] = penalty
            values["wasserstein"] = real_out - fake_out
        for name, value in values.items():
            self.trackers[name].update_state(value)

    def _unpack(self, data):
        return data["image"], self.label_of(data), self.step_seed(data)

    def train_step(self, data):
        x, label, seed = self._unpack(data)
        n = self.config.critic_steps
        batch = x.shape[0]
        if batch is not None and batch % n:
            raise UsageError(
                f"batch of {batch} rows per replica is not divisible by n_critic={n}: a step "
                f"splits its batch into n_critic discriminator minibatches; use a batch size "
                f"that is a multiple of {n} (e.g. {64 * n})"
            )
        xs = tf.split(x, n) if n > 1 else [x]
        labels = tf.split(label, n) if (n > 1 and label is not None) else [label] * n
        d_vars = self.discriminator_variables
        for i in range(n):
            m = tf.shape(xs[i])[0]
            fake = self.generate(self._noise(m, rng.fold_in(seed, 2 * i)), labels[i], True)
            with tf.GradientTape() as tape:
                terms = self._discriminator_terms(
                    xs[i], labels[i], fake, rng.fold_in(seed, 2 * i + 1)
                )
                loss = replica_mean(terms[0])
            grads = tape.gradient(loss, d_vars)
            self.d_optimizer.apply_gradients(zip(grads, d_vars, strict=True))
            self._track(terms[0], None, *terms[1:])
        g_vars = self.generator.trainable_variables
        m = tf.shape(xs[-1])[0]
        with tf.GradientTape() as tape:
            fake = self.generate(self._noise(m, rng.fold_in(seed, 2 * n)), labels[-1], True)
            g_loss = generator_loss(self.config.loss, self.discriminate(fake, labels[-1]))
            loss = replica_mean(g_loss)
        grads = tape.gradient(loss, g_vars)
        self.g_optimizer.apply_gradients(zip(grads, g_vars, strict=True))
        self.trackers["g_loss"].update_state(g_loss)
        return {name: m.result() for name, m in self.trackers.items()}

    def test_step(self, data):
        x, label, seed = self._unpack(data)
        fake = self.generate(self._noise(tf.shape(x)[0], rng.fold_in(seed, 0)), label)
        d_loss, real_out, fake_out, penalty = self._discriminator_terms(
            x, label, fake, rng.fold_in(seed, 1)
        )
        g_loss = generator_loss(self.config.loss, fake_out)
        self._track(d_loss, g_loss, real_out, fake_out, penalty)
        return {name: m.result() for name, m in self.trackers.items()}

    # -- samples, quality and serving ------------------------------------------------------

    def sample(self, seeds, label=None):
        """Per-row seeds int32 [N, 2] -> model-space images [N, H, W, C] (inference mode)."""
        return self.generate(rng.row_normal(seeds, [self.config.latent_dim]), label)

    def image_summaries(self, batch, seed) -> dict:
        """The same noise (the harness's fixed summary seed) every epoch: one picture of
        how training moved."""
        n = int(batch["image"].shape[0])
        return {"samples": self.to_unit(self.sample(rng.row_seeds(seed, n), self.labels_for(n)))}

    def serving_functions(self) -> dict:
        spec, cond, d = self.spec, self.config.conditional, self.config.latent_dim

        def label_for(label, n):
            return contract.check_label(label, spec.num_classes, n) if cond else None

        def sample(seed, label=None):
            seed = contract.check_seed(seed)
            images = self.sample(seed, label_for(label, tf.shape(seed)[0]))
            return {"images": spec.to_data(images)}

        def generate(z, label=None):
            z = contract.check_rows("z", z)
            return {"images": spec.to_data(self.generate(z, label_for(label, tf.shape(z)[0])))}

        z_spec = tf.TensorSpec([None, d], tf.float32, name="z")
        return {
            "sample": contract.signature(sample, contract.SEED_SPEC, conditional=cond),
            "generate": contract.signature(generate, z_spec, conditional=cond),
        }


def build(config: Config, spec, learning_rate: float | None = None) -> GAN:
    model = GAN(spec, config)
    model.compile(learning_rate=learning_rate)
    return model


def parameter_count(config: Config, shape, num_classes: int = 10) -> dict:
    """Closed-form parameter counts of G and D (trainable), for tests and docs."""
    h, w, c = shape
    f, z = config.filters, config.latent_dim + (num_classes if config.conditional else 0)
    cells = h // 4 * w // 4 * 2 * f
    generator = z * cells + 2 * cells + 16 * 2 * f * f + 2 * f + 16 * f * c + c
    discriminator = (16 * c * f + f) + (16 * f * 2 * f + 2 * f) + cells + 1
    if config.conditional:
        discriminator += num_classes * cells
    return {"generator": generator, "discriminator": discriminator}
