"""Variational autoencoder (Kingma & Welling 2014) with the IWAE bound (Burda et al. 2015).

    q(z|x) = N(z; mu(x), diag sigma(x)^2)      p(z) = N(0, I)      p(x|z) = head(decoder(z))
    ELBO(x)   = E_q[log p(x|z)] - KL(q(z|x) || p(z)) = -(distortion + rate)
    IWAE_k(x) = E[log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x)],  z_i ~ q(z|x)
    ELBO = IWAE_1 <= IWAE_k <= IWAE_{k+1} <= log p(x)

Distributions and KL come from tfp.distributions; the pixel likelihood is a head from
`gen_keras.distributions` (Bernoulli for binary data, Categorical-256 or a discretized
logistic mixture for 8-bit data). Noise is explicit and stateless, so the same seed
gives the same z before and after export. An optional label conditions encoder and
decoder (a conditional VAE).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from gen_keras import contract, rng
from gen_keras.config import check, check_fields, check_positive, hparam
from gen_keras.distributions import bits_per_dim, make_head, resolve_likelihood
from gen_keras.models.base import GenerativeModel, batch_gradients
from gen_keras.models.networks import conv_decoder, residual_decoder, residual_encoder

tfd = tfp.distributions


@dataclasses.dataclass(frozen=True)
class Config:
    """VAE architecture and objective."""

    arch: str = hparam(
        "conv",
        "conv: 2 strided (transposed) convs each way; mlp: 2 tanh layers; resnet: "
        "pytorch-generative's VAE (stride-2 stages with residual blocks, a latent grid).",
        ("conv", "mlp", "resnet"),
    )
    latent_dim: int = hparam(
        32, "Latent dimensions (resnet: channels per position of the latent grid)."
    )
    hidden: int = hparam(
        32,
        "conv: filters of the first conv (the second has 2x); mlp: units; resnet: channels "
        "of each stage.",
    )
    stages: int = hparam(
        4,
        "resnet: stride-2 stages each way; the latent grid is H/2^stages x W/2^stages, the "
        "image zero-padded up to multiples of 2^stages (MNIST: 32x32, a 2x2 grid).",
    )
    residual_blocks: int = hparam(2, "resnet: residual blocks per stage.")
    residual_hidden: int = hparam(32, "resnet: channels inside each residual block.")
    likelihood: str = hparam(
        "auto",
        "Pixel likelihood (auto: bernoulli for binary data, categorical for uint8).",
        ("auto", "bernoulli", "categorical", "logistic_mixture"),
    )
    num_mixtures: int = hparam(5, "Components of the logistic_mixture likelihood.")
    kl: str = hparam(
        "analytic",
        "KL term: analytic (tfd.kl_divergence) or mc (log q(z|x) - log p(z)).",
        ("analytic", "mc"),
    )
    train_k: int = hparam(1, "Importance samples of the training objective (1: ELBO, > 1: IWAE).")
    eval_k: int = hparam(100, "Importance samples of the end-of-run IWAE bound.")
    export_k: int = hparam(
        16, "Importance samples of the exported log_prob (batch-1 p50 ~4.5 ms at 16)."
    )
    chunk: int = hparam(100, "Importance samples decoded at once (memory stays flat in k).")
    conditional: bool = hparam(False, "Condition encoder and decoder on the class label.")

    def __post_init__(self):
        check_fields(self)
        for name in (
            "latent_dim",
            "hidden",
            "stages",
            "residual_blocks",
            "residual_hidden",
            "num_mixtures",
            "train_k",
            "eval_k",
            "export_k",
            "chunk",
        ):
            check_positive(name, getattr(self, name))
        check(
            not (self.arch == "resnet" and self.conditional),
            "arch='resnet' is unconditional (pytorch-generative's VAE); use arch='conv' or "
            "'mlp' for a conditional VAE",
        )


def small() -> Config:
    """A seconds-to-train variant for tests."""
    return Config(latent_dim=4, hidden=8, eval_k=8, export_k=8, chunk=4)


def reproduce(arch: str = "mlp") -> Config:
    """Published configurations. mlp (and any arch but resnet): Burda et al.'s (2015)
    one-stochastic-layer architecture, 784-200-200-50, tanh. resnet: pytorch-generative's
    VAE as its reproduce() builds it on MNIST padded to 32x32: 4 stride-2 stages of 64
    channels with 2 residual blocks of 32 each way, 16 latent channels on a 2x2 grid (a
    64-d z); 974,241 weights with its Bernoulli head, as the peer counts them."""
    if arch == "resnet":
        return Config(
            arch="resnet",
            latent_dim=16,
            hidden=64,
            stages=4,
            residual_blocks=2,
            residual_hidden=32,
            eval_k=5000,
        )
    return Config(arch="mlp", latent_dim=50, hidden=200, eval_k=5000, chunk=100)


@keras.saving.register_keras_serializable(package="gen_keras")
class VAE(GenerativeModel):
    """Encoder -> diagonal Gaussian posterior; decoder -> pixel likelihood head."""

    family = "vae"
    config_class = Config

    def __init__(self, spec, config: Config, **kwargs):
        super().__init__(spec, config, **kwargs)
        spec, config = self.spec, self.config
        h, w, c = spec.shape
        name = resolve_likelihood(config.likelihood, spec)
        self.head = make_head(name, config.num_mixtures)
        params = self.head.num_params(c)
        hid = config.hidden
        layers = keras.layers
        self.latent_size = config.latent_dim  # dimensions of z (resnet: the flattened grid)
        self.pad = None  # resnet: tf.pad paddings up to its grid (the decoder crops them off)
        if config.arch == "resnet":
            size = 2**config.stages
            grid = (-(-h // size), -(-w // size))
            self.latent_size = grid[0] * grid[1] * config.latent_dim
            ph, pw = grid[0] * size - h, grid[1] * size - w
            self.pad = [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]]
            self.grid = (*grid, config.latent_dim)
            arch = (config.stages, hid, config.residual_hidden, config.residual_blocks)
            self.encoder = residual_encoder(*arch, 2 * config.latent_dim)
            self.decoder = residual_decoder(*arch, params)
        elif config.arch == "conv":
            check(
                h % 4 == 0 and w % 4 == 0,
                f"arch='conv' needs height and width divisible by 4, got {spec.shape}",
            )
            self.encoder = keras.Sequential(
                [
                    layers.Conv2D(hid, 3, 2, "same", activation="relu"),
                    layers.Conv2D(2 * hid, 3, 2, "same", activation="relu"),
                    layers.Flatten(),
                ],
                name="encoder",
            )
            self.decoder = conv_decoder(spec.shape, hid, params)
        else:
            self.encoder = keras.Sequential(
                [
                    layers.Flatten(),
                    layers.Dense(hid, activation="tanh"),
                    layers.Dense(hid, activation="tanh"),
                ],
                name="encoder",
            )
            self.decoder = keras.Sequential(
                [
                    layers.Dense(hid, activation="tanh"),
                    layers.Dense(hid, activation="tanh"),
                    layers.Dense(h * w * params),
                    layers.Reshape((h, w, params)),
                ],
                name="decoder",
            )
        # resnet: the encoder's last conv gives the posterior's 2 x latent_dim channels
        self.posterior_params = (
            layers.Identity(name="posterior")
            if config.arch == "resnet"
            else layers.Dense(2 * config.latent_dim, name="posterior")
        )
        self.trackers = {
            name: keras.metrics.Mean(name)
            for name in ("loss", "elbo", "distortion", "rate", "bits_per_dim")
        }
        # Images per chunk of a training step's batch (TrainConfig.micro_batch); 0: whole.
        self.micro_batch = 0

    # -- the probabilistic model ---------------------------------------------------------

    def _scaled(self, x):
        """Model-space images -> network input of order 1 (resnet: zero-padded to its grid)."""
        x = x / 255.0 if self.spec.mode == "uint8" else x
        return x if self.pad is None else tf.pad(x, self.pad)

    def _with_label(self, features, label):
        if not self.config.conditional:
            return features
        return tf.concat([features, tf.one_hot(label, self.spec.num_classes)], axis=-1)

    def prior(self) -> tfd.Distribution:
        d = self.latent_size
        return tfd.MultivariateNormalDiag(loc=tf.zeros([d]), scale_diag=tf.ones([d]))

    def posterior(self, x, label=None) -> tfd.Distribution:
        """q(z|x): x float32 [B, H, W, C] model space -> MVNDiag, batch [B], event [latent]."""
        features = tf.cast(self.encoder(self._scaled(x)), tf.float32)  # resnet: maybe bf16
        raw = self.posterior_params(self._with_label(features, label))
        # channels last: [B, 2d], or resnet's [B, h, w, 2 x latent_dim] split per position
        loc, scale = (tf.reshape(t, [-1, self.latent_size]) for t in tf.split(raw, 2, axis=-1))
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.nn.softplus(scale) + 1e-4)

    def decode_params(self, z, label=None):
        """z float32 [B, latent] -> head parameters [B, H, W, head.num_params(C)]."""
        if self.pad is None:
            return self.decoder(self._with_label(z, label))
        out = tf.cast(self.decoder(tf.reshape(z, [-1, *self.grid])), tf.float32)
        (top, left), (h, w) = (self.pad[1][0], self.pad[2][0]), self.spec.shape[:2]
        return out[:, top : top + h, left : left + w]

    def call(self, x, label=None):
        """Reconstruction means (model space) of x via the posterior mean."""
        return self.head.mean(self.decode_params(self.posterior(x, label).mean(), label))

    def elbo_terms(self, x, label, seed):
        """Single-sample (distortion, rate), each float32 [B]; elbo = -(distortion + rate)."""
        return self._elbo_terms(x, label, self._noise(x, seed))

    def _elbo_terms(self, x, label, eps):
        """(distortion, rate) [B] for z = mu + sigma * eps, eps standard normal [B, latent]."""
        q = self.posterior(x, label)
        z = q.mean() + q.stddev() * eps
        distortion = -self.head.log_prob(self.decode_params(z, label), x)
        return distortion, self.rate(q, z)

    def _noise(self, x, seed, k: int = 1):
        """Standard normal eps [B, latent] for x's batch, or for k > 1 importance samples
        [k, B, latent] (the first chunk of `_batch_noise`)."""
        if k == 1:
            return tf.random.stateless_normal([tf.shape(x)[0], self.latent_size], seed)
        return self._batch_noise(x, seed)(0, k)

    def rate(self, q, z):
        """KL(q(z|x) || p(z)) per example [B]: analytic, or the one-sample log q(z) - log p(z)."""
        if self.config.kl == "analytic":
            return tfd.kl_divergence(q, self.prior())
        return q.log_prob(z) - self.prior().log_prob(z)

    def log_weights(self, x, label, q, eps):
        """log p(x, z) - log q(z|x) for z = mu + sigma * eps, eps [k, B, latent] -> [k, B]."""
        z = q.mean() + q.stddev() * eps
        k, b = tf.shape(eps)[0], tf.shape(eps)[1]
        flat_z = tf.reshape(z, [-1, self.latent_size])
        flat_label = None if label is None else tf.tile(label, [k])
        params = self.decode_params(flat_z, flat_label)
        log_px = self.head.log_prob(params, tf.tile(x, [k, 1, 1, 1]))
        log_px = tf.reshape(log_px, [k, b])
        return log_px + self.prior().log_prob(z) - q.log_prob(z)

    def iwae(self, x, label, k: int, noise):
        """IWAE_k bound, float32 [B], streaming `chunk` samples at a time.

        noise(i, n) -> standard normal eps [n, B, latent] for chunk i of n samples.
        """
        q = self.posterior(x, label)
        chunk = min(self.config.chunk, k)
        full, rest = divmod(k, chunk)

        def body(i, acc):
            log_w = self.log_weights(x, label, q, noise(i, chunk))
            return i + 1, tf.experimental.numpy.logaddexp(acc, tf.reduce_logsumexp(log_w, 0))

        acc = tf.fill([tf.shape(x)[0]], -math.inf)
        _, acc = tf.while_loop(lambda i, _: i < full, body, (tf.constant(0), acc))
        if rest:
            log_w = self.log_weights(x, label, q, noise(full, rest))
            acc = tf.experimental.numpy.logaddexp(acc, tf.reduce_logsumexp(log_w, 0))
        return acc - math.log(k)

    def _batch_noise(self, x, seed):
        d = self.latent_size
        return lambda i, n: tf.random.stateless_normal([n, tf.shape(x)[0], d], rng.fold_in(seed, i))

    def _row_noise(self, seeds):
        d = self.latent_size
        return lambda i, n: tf.transpose(
            rng.row_normal(tf.map_fn(lambda s: rng.fold_in(s, i), seeds), [n, d]), [1, 0, 2]
        )

    # -- training ------------------------------------------------------------------------

    def _unpack(self, data):
        return data["image"], self.label_of(data), self.step_seed(data)

    def _objective(self, x, label, eps):
        """Per-example (objective, elbo, distortion, rate); objective = ELBO or IWAE_k.
        eps: the step's standard normal noise, [B, latent] (ELBO) or [k, B, latent]."""
        k = self.config.train_k
        if k == 1:
            distortion, rate = self._elbo_terms(x, label, eps)
            elbo = -(distortion + rate)
            return elbo, elbo, distortion, rate
        q = self.posterior(x, label)
        log_w = self.log_weights(x, label, q, eps)
        iwae = tf.reduce_logsumexp(log_w, 0) - math.log(k)
        # The mean log weight is a Monte Carlo ELBO; its parts are not split here.
        elbo = tf.reduce_mean(log_w, 0)
        return iwae, elbo, tf.zeros_like(elbo), tf.zeros_like(elbo)

    def _track(self, objective, elbo, distortion, rate):
        loss = -objective
        return self.track(
            {
                "loss": loss,
                "elbo": elbo,
                "distortion": distortion,
                "rate": rate,
                "bits_per_dim": bits_per_dim(loss, self.spec.num_dims),
            }
        )

    @tf.autograph.experimental.do_not_convert  # Python control flow only; errors stay as raised
    def train_step(self, data):
        x, label, seed = self._unpack(data)
        k = self.config.train_k
        eps = self._noise(x, seed, k)
        # micro-batches split eps with the images: the same noise, so the same update
        grads, terms = batch_gradients(
            self.trainable_variables,
            self._objective,
            [x, label, eps],
            self.micro_batch,
            axes=[0, 0, 0 if k == 1 else 1],
        )
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return self._track(*terms)

    def test_step(self, data):
        x, label, seed = self._unpack(data)
        distortion, rate = self.elbo_terms(x, label, seed)
        elbo = -(distortion + rate)
        return self._track(elbo, elbo, distortion, rate)

    def eval_bytes_per_example(self) -> int:
        """A chunk of importance samples decodes chunk x H x W x P floats per example; the
        head's log-softmax and gradients-free temporaries take about 4 such tensors. (resnet:
        P is at least the stages' channels, over the padded image: an upper bound.)"""
        h, w, c = self.spec.shape
        width = self.head.num_params(c)
        if self.pad is not None:
            h, w = (g * 2**self.config.stages for g in self.grid[:2])
            width = max(width, self.config.hidden)
        chunk = min(self.config.chunk, self.config.eval_k)
        return 4 * 4 * chunk * h * w * width

    def score_batch(self, data, seed) -> dict:
        """Test ELBO and IWAE_{eval_k} per image [B] (nats); nll_nats = -IWAE, the tighter."""
        x, label = data["image"], self.label_of(data)
        distortion, rate = self.elbo_terms(x, label, seed)
        k = self.config.eval_k
        iwae = self.iwae(x, label, k, self._batch_noise(x, seed))
        return {"elbo": -(distortion + rate), f"iwae_{k}": iwae, "nll_nats": -iwae}

    # -- pictures and serving ------------------------------------------------------------

    def image_summaries(self, batch, seed) -> dict:
        n = int(batch["image"].shape[0])
        seeds = rng.row_seeds(seed, n)
        samples = self.to_unit(self._sample(seeds, self.labels_for(n))["mean"])
        x = batch["image"][: n // 2]
        label = self.label_of(batch, n // 2)
        recon = self.to_unit(self(x, label))
        pairs = tf.reshape(tf.stack([self.to_unit(x), recon], 1), [-1, *self.spec.shape])
        return {"samples": samples, "reconstructions": pairs}

    def sample(self, seeds, label=None):
        """Per-row seeds int32 [N, 2] -> model-space samples [N, H, W, C]: z ~ p(z), x ~ p(x|z)."""
        return self._sample(seeds, label)["sample"]

    def _sample(self, seeds, label):
        z = rng.row_normal(seeds, [self.latent_size])
        params = self.decode_params(z, label)
        noise_shape = [*self.spec.shape[:2], self.head.noise_channels(self.spec.shape[2])]
        noise = rng.row_uniform(tf.map_fn(lambda s: rng.fold_in(s, 1), seeds), noise_shape)
        return {"sample": self.head.sample(params, noise), "mean": self.head.mean(params)}

    def _probs(self, mean):
        return mean if self.spec.binary else mean / 255.0

    def serving_functions(self) -> dict:
        spec, cond = self.spec, self.config.conditional
        d = self.latent_size

        def label_for(label, n):
            return contract.check_label(label, spec.num_classes, n) if cond else None

        def sample(seed, label=None):
            seed = contract.check_seed(seed)
            out = self._sample(seed, label_for(label, tf.shape(seed)[0]))
            return {"images": spec.to_data(out["sample"]), "probs": self._probs(out["mean"])}

        def log_prob(images, seed, label=None):
            images = contract.check_images(images, spec)
            seed = contract.check_seed(seed, tf.shape(images)[0])
            label = label_for(label, tf.shape(images)[0])
            x = spec.to_model(images)
            q = self.posterior(x, label)
            z = q.mean() + q.stddev() * rng.row_normal(seed, [d])
            log_px = self.head.log_prob(self.decode_params(z, label), x)
            elbo = log_px - self.rate(q, z)
            iwae = self.iwae(x, label, self.config.export_k, self._row_noise(seed))
            return {"elbo": elbo, "iwae": iwae}

        def encode(images, label=None):
            images = contract.check_images(images, spec)
            q = self.posterior(spec.to_model(images), label_for(label, tf.shape(images)[0]))
            return {"z_mean": q.mean(), "z_stddev": q.stddev()}

        def decode(z, label=None):
            z = contract.check_rows("z", z)
            params = self.decode_params(z, label_for(label, tf.shape(z)[0]))
            mean = self.head.mean(params)
            mode = tf.round(mean) if spec.binary else mean
            return {"images": spec.to_data(mode), "probs": self._probs(mean)}

        def reconstruct(images, seed, label=None):
            images = contract.check_images(images, spec)
            seed = contract.check_seed(seed, tf.shape(images)[0])
            label = label_for(label, tf.shape(images)[0])
            q = self.posterior(spec.to_model(images), label)
            z = q.mean() + q.stddev() * rng.row_normal(seed, [d])
            mean = self.head.mean(self.decode_params(z, label))
            mode = tf.round(mean) if spec.binary else mean
            return {"images": spec.to_data(mode), "probs": self._probs(mean)}

        images, seed = contract.image_spec(spec), contract.SEED_SPEC
        z_spec = tf.TensorSpec([None, d], tf.float32, name="z")
        sig = lambda fn, *specs: contract.signature(fn, *specs, conditional=cond)
        return {
            "sample": sig(sample, seed),
            "log_prob": sig(log_prob, images, seed),
            "encode": sig(encode, images),
            "decode": sig(decode, z_spec),
            "reconstruct": sig(reconstruct, images, seed),
        }


def build(config: Config, spec, learning_rate: float | None = None) -> VAE:
    model = VAE(spec, config)
    model.compile(learning_rate=learning_rate)
    return model
