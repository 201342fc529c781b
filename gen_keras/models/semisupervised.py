"""Semi-supervised generative classifiers: M2 and M1+M2 (Kingma et al. 2014, arXiv:1406.5298).

M2 is a VAE with a discrete label y beside the continuous latent z:

    p(x, y, z) = p(x | y, z) p(y) p(z)        p(y) = Cat(1/K), p(z) = N(0, I)
    q(y, z | x) = q(z | x, y) q(y | x)
    labeled   L(x, y) = E_q(z|x,y)[log p(x|y,z)] + log p(y) - KL(q(z|x,y) || p(z))   (ELBO)
    unlabeled U(x)    = sum_y q(y|x) L(x, y) + H(q(y|x))                             (y summed out)
    loss = mean_l[-L(x, y)] + mean_u[-U(x)] + alpha * mean_l[-log q(y|x)]
           + consistency * mean_u[1{max q(y|x_weak) >= confidence} * -log q(y_hat | x_strong)]

U is computed for all K labels at once (one decoder pass over K x batch rows). x is the
binarized image with a Bernoulli p(x|y,z) for `method=m2`; for `method=m1m2` it is
z1 ~ q(z1|image) of a frozen, pretrained gen_keras VAE (M1, loaded from its run
directory) with a diagonal Gaussian p(z1|y,z2). `method=supervised` trains only q(y|x)
on the labeled images (weak shifts and dropout, as the labeled term of M2; no unlabeled
term, `consistency` ignored): the honest baseline (same classifier, same augmentation).

The recipe (docs/semisupervised.md says what it reached and what was tried): the
paper's M2 objective with a convolutional q(y|x) (the classifier family's convnet), small
random shifts and dropout on the classifier's input/features, and the last term above, a
FixMatch-style (Sohn et al. 2020) confidence-thresholded pseudo-label consistency between
a weakly shifted and a strongly shifted + cut-out view. `consistency=0, weak_shift=0,
strong_shift=0, cutout=0, dropout=0` is the literal M2 of the paper (with a conv q(y|x)).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from gen_keras import contract, rng
from gen_keras.config import check, check_fields, check_positive, hparam
from gen_keras.models.base import (
    GenerativeModel,
    classification_scores,
    dummy_batch,
    with_error_count,
)
from gen_keras.models.classifier import random_shift
from gen_keras.models.networks import convnet_trunk

tfd = tfp.distributions

METHODS = ("m2", "m1m2", "supervised")


@dataclasses.dataclass(frozen=True)
class Config:
    """M2 / M1+M2 architecture, objective, augmentation and the labeled subset."""

    method: str = hparam(
        "m2",
        "m2 | m1m2 (M2 on a pretrained VAE's z; needs --m1_from) | supervised (labels only).",
        METHODS,
    )
    labels_per_class: int = hparam(10, "Size per class of the labeled subset of train_split.")
    label_seed: int = hparam(0, "Seed of the labeled draw (the trainer sets it to --seed).")
    labeled_per_batch: int = hparam(32, "Labeled rows of every batch (the rest unlabeled).")
    latent_dim: int = hparam(32, "z of M2 (z2 of M1+M2).")
    hidden: int = hparam(500, "Units of the MLPs of q(z|x,y), p(x|y,z) (and m1m2's q(y|x)).")
    filters: int = hparam(32, "q(y|x) convnet: channels of the first conv (the second 2x).")
    features: int = hparam(128, "Units of q(y|x)'s ReLU feature layer (exported `features`).")
    dropout: float = hparam(0.5, "Dropout on q(y|x)'s features, in training only.")
    alpha: float = hparam(50.0, "Weight of -log q(y|x) per labeled image (vs nats per image).")
    consistency: float = hparam(50.0, "Weight of the pseudo-label term (0: the paper's M2).")
    confidence: float = hparam(0.95, "Confidence a weak-view prediction needs to be a target.")
    weak_shift: int = hparam(1, "Pixels of random shift of the view q(y|x) trains on.")
    strong_shift: int = hparam(3, "Pixels of random shift of the consistency view.")
    cutout: int = hparam(10, "Side of the zeroed square of the consistency view (0: none).")
    m1_from: str = hparam("", "method=m1m2: a gen_keras VAE run (model_dir) whose q(z1|x) is M1.")

    def __post_init__(self):
        check_fields(self)
        for name in ("labels_per_class", "labeled_per_batch", "latent_dim", "hidden"):
            check_positive(name, getattr(self, name))
        for name in ("filters", "features"):
            check_positive(name, getattr(self, name))
        check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        check(self.alpha >= 0, f"alpha={self.alpha} must be >= 0")
        check(self.consistency >= 0, f"consistency={self.consistency} must be >= 0")
        check(0.0 < self.confidence <= 1.0, f"confidence={self.confidence} must be in (0, 1]")
        for name in ("weak_shift", "strong_shift", "cutout"):
            check(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        check(
            (self.method == "m1m2") == bool(self.m1_from),
            f"method={self.method!r} with m1_from={self.m1_from!r}: method=m1m2 needs "
            "--m1_from=<a VAE model_dir> and the other methods take none",
        )


def small() -> Config:
    """A seconds-to-train variant for tests."""
    return Config(
        labeled_per_batch=8,
        latent_dim=4,
        hidden=16,
        filters=4,
        features=16,
        dropout=0.0,
        cutout=4,
        alpha=20.0,
    )


def reproduce() -> Config:
    """Kingma et al.'s M2 objective (alpha = 0.1 N with N/|labeled| = 500 at 10/class is
    about 50 per labeled image) without the consistency term and augmentation."""
    return Config(consistency=0.0, weak_shift=0, strong_shift=0, cutout=0, dropout=0.0)


def cutout(x, size: int, seed):
    """Zeroes one size x size square per image [B, H, W, C] (centre drawn from seed [2])."""
    shape = tf.shape(x)
    centre = tf.random.stateless_uniform(
        [shape[0], 2], seed, maxval=tf.reduce_max(shape[1:3]), dtype=tf.int32
    )
    centre = tf.minimum(centre, tf.stack([shape[1], shape[2]]) - 1)
    lo = centre - size // 2
    rows = tf.range(shape[1])[None, :]
    cols = tf.range(shape[2])[None, :]
    in_rows = (rows >= lo[:, :1]) & (rows < lo[:, :1] + size)  # [B, H]
    in_cols = (cols >= lo[:, 1:]) & (cols < lo[:, 1:] + size)  # [B, W]
    hole = tf.cast(in_rows[:, :, None] & in_cols[:, None, :], x.dtype)[..., None]
    return x * (1.0 - hole)


def masked_mean(values, mask):
    """sum(values * mask) / sum(mask), 0 for an empty mask; values, mask float32 [B]."""
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


@keras.saving.register_keras_serializable(package="gen_keras")
class SemiSupervised(GenerativeModel):
    """q(y|x), q(z|x,y), p(x|y,z); batches carry label -1 for unlabeled rows."""

    family = "semisupervised"
    config_class = Config

    def __init__(self, spec, config: Config, m1=None, **kwargs):
        super().__init__(spec, config, **kwargs)
        spec, config = self.spec, self.config
        self.num_classes = k = spec.num_classes
        layers = keras.layers
        self.m1 = m1
        if config.method == "m1m2":
            check(m1 is not None, "method='m1m2' needs the pretrained VAE (m1)")
            check(
                m1.spec == spec,
                f"the M1 VAE was trained on {m1.spec} but this run's data is {spec}: "
                "pretrain it on the same dataset and binarization",
            )
            m1.trainable = False
            self.x_dim = m1.config.latent_dim
            self.trunk = keras.Sequential(
                [layers.Dense(config.hidden, activation="relu", name="hidden_1")], name="trunk"
            )
        else:
            check(
                spec.binary,
                f"method={config.method!r} models binary images with a Bernoulli p(x|y,z); "
                f"use --binarization=binary_static or binary_dynamic (got {spec.mode!r})",
            )
            h, w, _ = spec.shape
            check(
                h >= 4 and w >= 4, f"the q(y|x) convnet needs images at least 4x4, got {spec.shape}"
            )
            self.x_dim = spec.num_dims
            self.trunk = convnet_trunk(config.filters)
        self.feature_layer = layers.Dense(config.features, activation="relu", name="features")
        self.logit_layer = layers.Dense(k, name="logits")
        self.generative = config.method != "supervised"
        if self.generative:
            self.x_encoder = keras.Sequential(
                [layers.Flatten(), layers.Dense(config.hidden, activation="relu")],
                name="x_encoder",
            )
            self.posterior_net = keras.Sequential(
                [
                    layers.Dense(config.hidden, activation="relu"),
                    layers.Dense(2 * config.latent_dim),
                ],
                name="posterior",
            )
            params = 2 if config.method == "m1m2" else 1  # Gaussian loc, scale | Bernoulli logits
            self.decoder = keras.Sequential(
                [
                    layers.Dense(config.hidden, activation="relu"),
                    layers.Dense(config.hidden, activation="relu"),
                    layers.Dense(self.x_dim * params),
                ],
                name="decoder",
            )
        names = ["loss", "accuracy", "cross_entropy"]
        if self.generative:
            names += ["elbo", "unlabeled_bound", "distortion", "rate"]
        self.trackers = {name: keras.metrics.Mean(name) for name in names}
        # The supervised baseline uses labels only: no unlabeled term of any kind.
        self.consistent = self.generative and config.consistency > 0
        if self.consistent:
            for name in ("consistency", "confident"):
                self.trackers[name] = keras.metrics.Mean(name)

    # -- q(y|x) --------------------------------------------------------------------------

    def augment(self, x, seed, shift: int, hole: int = 0):
        """Model-space images [B, H, W, C] moved by up to `shift` pixels, a square cut out."""
        if shift:
            x = random_shift(x, shift, rng.fold_in(seed, 1))
        if hole:
            x = cutout(x, hole, rng.fold_in(seed, 2))
        return x

    def observe(self, x, seed=None):
        """What M2 models: the image x [B, H, W, C] (m2), or z1 [B, d1] ~ q(z1|x) of M1
        (its mean when seed is None)."""
        if self.config.method != "m1m2":
            return x
        q = self.m1.posterior(x)
        if seed is None:
            return tf.stop_gradient(q.mean())
        return tf.stop_gradient(q.sample(seed=seed))

    def classify(self, x, seed=None):
        """Model-space images [B, H, W, C] -> (logits [B, K], features [B, F]).

        A seed turns on dropout (training); augmentation is the caller's (`augment`).
        """
        if self.config.method == "m1m2":
            h = self.trunk(self.observe(x))
        else:
            h = self.trunk(self.to_unit(x))
        f = self.feature_layer(h)
        if seed is not None and self.config.dropout > 0:
            f = tf.nn.experimental.stateless_dropout(f, self.config.dropout, seed=seed)
        return self.logit_layer(f), f

    def build(self, input_shape=None):
        """Creates every layer: q(y|x), then q(z|x,y) and p(x|y,z), in test_step's order.

        `call` runs q(y|x) only, so Keras's default build would mark the model built with
        the generative layers unbuilt (and warn). The dummy pass draws no random numbers.
        """
        del input_shape  # the shapes are the spec's
        x = dummy_batch(self.spec)["image"]
        self.classify(x)
        if self.generative:
            self.elbo_all_labels(self.observe(x), tf.constant([0, 0], tf.int32))

    def call(self, x):
        """Model-space images [B, H, W, C] -> logits of q(y|x) [B, K]."""
        return self.classify(x)[0]

    # -- q(z|x,y), p(x|y,z) --------------------------------------------------------------

    def prior(self) -> tfd.Distribution:
        d = self.config.latent_dim
        return tfd.MultivariateNormalDiag(loc=tf.zeros([d]), scale_diag=tf.ones([d]))

    def label_prior(self) -> tfd.Distribution:
        return tfd.OneHotCategorical(logits=tf.zeros([self.num_classes]), dtype=tf.float32)

    def posterior(self, h, y):
        """q(z|x,y): h = x_encoder(obs) [N, hidden], y one-hot [N, K] -> MVNDiag, batch [N]."""
        loc, scale = tf.split(self.posterior_net(tf.concat([h, y], -1)), 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.nn.softplus(scale) + 1e-4)

    def likelihood(self, z, y) -> tfd.Distribution:
        """p(x|y,z): z [N, latent], y one-hot [N, K] -> batch [N], event = one observation."""
        out = self.decoder(tf.concat([z, y], -1))
        if self.config.method == "m1m2":
            loc, scale = tf.split(out, 2, axis=-1)
            return tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.nn.softplus(scale) + 1e-3)
        logits = tf.reshape(out, [-1, *self.spec.shape])
        return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 3)

    def elbo_terms(self, h, obs, y, eps):
        """L(x, y) with z = mu + sigma * eps: h [N, hidden], obs [N, ...], y one-hot [N, K],
        eps [N, latent] -> (elbo, distortion, rate), float32 [N] each, nats.

        elbo = -distortion - rate + log p(y).
        """
        q = self.posterior(h, y)
        z = q.mean() + q.stddev() * eps
        distortion = -self.likelihood(z, y).log_prob(obs)
        rate = tfd.kl_divergence(q, self.prior())
        return -distortion - rate + self.label_prior().log_prob(y), distortion, rate

    def elbo_all_labels(self, obs, seed):
        """L(x, y) for every y in one pass: obs [B, ...], seed [2] -> (elbo, distortion, rate),
        each float32 [K, B]; the noise of label k is noise(obs, seed)[k]."""
        k, b = self.num_classes, tf.shape(obs)[0]
        h = self.x_encoder(obs)
        y = tf.repeat(tf.eye(k), b, axis=0)  # [K*B, K]: label k for rows k*B .. k*B + B - 1
        eps = tf.reshape(self.noise(obs, seed), [k * b, -1])
        tile = lambda t: tf.tile(t, [k] + [1] * (len(t.shape) - 1))  # noqa: E731
        terms = self.elbo_terms(tile(h), tile(obs), y, eps)
        return tuple(tf.reshape(t, [k, b]) for t in terms)

    def noise(self, obs, seed):
        """Standard normal eps float32 [K, B, latent] from seed [2]."""
        shape = [self.num_classes, tf.shape(obs)[0], self.config.latent_dim]
        return tf.random.stateless_normal(shape, seed)

    @staticmethod
    def unlabeled_bound(logits, elbo_all):
        """U(x) = sum_y q(y|x) L(x, y) + H(q(y|x)): logits [B, K], elbo_all [K, B] -> [B]."""
        q = tfd.Categorical(logits=logits)
        return tf.reduce_sum(tf.transpose(q.probs_parameter()) * elbo_all, 0) + q.entropy()

    # -- the objective -------------------------------------------------------------------

    def objective(self, x, label, seed):
        """Training loss (a scalar) and per-batch terms; label int32 [B], -1 = unlabeled."""
        cfg = self.config
        labeled = tf.cast(label >= 0, tf.float32)
        unlabeled = 1.0 - labeled
        safe_label = tf.maximum(label, 0)
        weak = self.augment(x, rng.fold_in(seed, 1), cfg.weak_shift)
        logits, _ = self.classify(weak, rng.fold_in(seed, 2))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(safe_label, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), label), tf.float32)
        terms = {
            "cross_entropy": masked_mean(ce, labeled),
            "accuracy": masked_mean(correct, labeled),
        }
        loss = cfg.alpha * terms["cross_entropy"]
        if self.generative:
            obs = self.observe(x, rng.fold_in(seed, 3))
            elbo_all, distortion_all, rate_all = self.elbo_all_labels(obs, rng.fold_in(seed, 4))
            pick = lambda t: tf.gather(tf.transpose(t), safe_label, batch_dims=1)  # noqa: E731
            bound = self.unlabeled_bound(logits, elbo_all)
            terms["elbo"] = masked_mean(pick(elbo_all), labeled)
            terms["unlabeled_bound"] = masked_mean(bound, unlabeled)
            terms["distortion"] = masked_mean(pick(distortion_all), labeled)
            terms["rate"] = masked_mean(pick(rate_all), labeled)
            loss += -terms["elbo"] - terms["unlabeled_bound"]
        if self.consistent:
            strong = self.augment(x, rng.fold_in(seed, 5), cfg.strong_shift, cfg.cutout)
            strong_logits, _ = self.classify(strong, rng.fold_in(seed, 6))
            probs = tf.stop_gradient(tf.nn.softmax(logits))
            confident = tf.cast(tf.reduce_max(probs, -1) >= cfg.confidence, tf.float32)
            target = tf.argmax(probs, -1, output_type=tf.int32)
            pseudo = tf.nn.sparse_softmax_cross_entropy_with_logits(target, strong_logits)
            terms["consistency"] = masked_mean(pseudo * confident, unlabeled)
            terms["confident"] = masked_mean(confident, unlabeled)
            loss += cfg.consistency * terms["consistency"]
        return loss, terms

    def _track(self, loss, terms):
        self.trackers["loss"].update_state(loss)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: m.result() for name, m in self.trackers.items()}

    def train_step(self, data):
        replicas = tf.distribute.get_replica_context()
        n = replicas.num_replicas_in_sync if replicas is not None else 1
        with tf.GradientTape() as tape:
            loss, terms = self.objective(data["image"], data["label"], self.step_seed(data))
            scaled = loss / n
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return self._track(loss, terms)

    def test_step(self, data):
        """On labeled evaluation images: accuracy, cross-entropy, L(x, y) and U(x)."""
        x, label, seed = data["image"], data["label"], self.step_seed(data)
        logits = self(x)
        ones = tf.ones_like(label, tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(label, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), label), tf.float32)
        terms = {"cross_entropy": tf.reduce_mean(ce), "accuracy": tf.reduce_mean(correct)}
        loss = self.config.alpha * terms["cross_entropy"]
        if self.generative:
            elbo_all, distortion_all, rate_all = self.elbo_all_labels(self.observe(x), seed)
            pick = lambda t: tf.gather(tf.transpose(t), label, batch_dims=1)  # noqa: E731
            terms["elbo"] = masked_mean(pick(elbo_all), ones)
            terms["unlabeled_bound"] = tf.reduce_mean(self.unlabeled_bound(logits, elbo_all))
            terms["distortion"] = tf.reduce_mean(pick(distortion_all))
            terms["rate"] = tf.reduce_mean(pick(rate_all))
            loss += -terms["elbo"]
        if self.consistent:
            terms["consistency"] = tf.constant(0.0)
            terms["confident"] = tf.reduce_mean(
                tf.cast(
                    tf.reduce_max(tf.nn.softmax(logits), -1) >= self.config.confidence, "float32"
                )
            )
        return self._track(loss, terms)

    def score_batch(self, data, seed) -> dict:
        """Per image [B]: 1.0 where q(y|x)'s most likely class is right; its cross-entropy."""
        del seed
        return classification_scores(self(data["image"]), data["label"])

    def summarize_scores(self, means: dict) -> dict:
        return with_error_count(means)

    # -- sampling, pictures and serving --------------------------------------------------

    def _sample(self, seeds, label):
        """seeds int32 [N, 2], label int32 [N] -> {"sample", "mean"} model-space [N, H, W, C]."""
        z = rng.row_normal(seeds, [self.config.latent_dim])
        y = tf.one_hot(label, self.num_classes)
        p = self.likelihood(z, y)
        noise_seeds = tf.map_fn(lambda s: rng.fold_in(s, 1), seeds)
        if self.config.method == "m1m2":
            params = self.m1.decode_params(p.mean())
            head = self.m1.head
            noise_shape = [*self.spec.shape[:2], head.noise_channels(self.spec.shape[2])]
            noise = rng.row_uniform(noise_seeds, noise_shape)
            return {"sample": head.sample(params, noise), "mean": head.mean(params)}
        mean = p.mean()
        noise = rng.row_uniform(noise_seeds, self.spec.shape)
        return {"sample": tf.cast(noise < mean, tf.float32), "mean": mean}

    def image_summaries(self, batch, seed) -> dict:
        """`samples`: one row per class (K rows of K samples, p(x|y,z) means)."""
        if not self.generative:
            return {}
        k = self.num_classes
        label = tf.repeat(tf.range(k, dtype=tf.int32), k)
        out = self._sample(rng.row_seeds(seed, k * k), label)
        return {"samples": self.to_unit(out["mean"])}

    def serving_functions(self) -> dict:
        spec = self.spec

        def classify(images):
            images = contract.check_images(images, spec)
            logits, features = self.classify(spec.to_model(images))
            return {"logits": logits, "features": features}

        def sample(seed, label):
            seed = contract.check_seed(seed)
            label = contract.check_label(label, self.num_classes, tf.shape(seed)[0])
            out = self._sample(seed, label)
            probs = out["mean"] if spec.binary else out["mean"] / 255.0
            return {"images": spec.to_data(out["sample"]), "probs": probs}

        functions = {"classify": contract.signature(classify, contract.image_spec(spec))}
        if self.generative:
            functions["sample"] = contract.signature(sample, contract.SEED_SPEC, conditional=True)
        return functions


def build(config: Config, spec, learning_rate: float | None = None, m1=None) -> SemiSupervised:
    """The model, compiled; method=m1m2 takes the pretrained VAE `m1` (loaded from
    `config.m1_from` by `gen_keras.runs.build`)."""
    model = SemiSupervised(spec, config, m1)
    model.compile(learning_rate=learning_rate)
    return model
