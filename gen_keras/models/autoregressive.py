"""The base of exact-likelihood raster-order models (PixelCNN, PixelRNN).

    log p(x) = sum_i log p(x_i | x_<i)       (raster order; R -> G -> B within a pixel)
    NLL      = -log p(x) in nats per image;  bits/dim = NLL / (H * W * C * ln 2)

A family adds its causal network, `params(x, label) -> head parameters`, and a cached
sampler (`stepper(label)`, the protocol of `gen_keras.sampling`); this base turns them into
maximum-likelihood training, exact per-example NLL for evaluation, sampling, completion,
pictures and the `sample` / `log_prob` / `complete` serving signatures.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gen_keras import contract, rng, sampling
from gen_keras.distributions import bits_per_dim
from gen_keras.models.base import Functions, GenerativeModel, batch_gradients


class AutoregressiveModel(GenerativeModel):
    """A causal network -> per-(sub)pixel likelihood head `self.head`, trained by exact NLL."""

    def __init__(self, spec, config, **kwargs):
        super().__init__(spec, config, **kwargs)
        self.trackers = {n: keras.metrics.Mean(n) for n in ("loss", "nll", "bits_per_dim")}
        self._functions = Functions()
        # Images per chunk of a training step's batch (TrainConfig.micro_batch); 0: whole.
        self.micro_batch = 0

    # -- what a family provides -------------------------------------------------------------

    def params(self, x, label=None):
        """x float32 [B, H, W, C] model space -> head params [B, H, W, P]; causal."""
        raise NotImplementedError

    def stepper(self, label=None):
        """The cached sampler's stepper (see gen_keras.sampling) for this network."""
        raise NotImplementedError

    # -- likelihood and training -------------------------------------------------------------

    def call(self, x, label=None):
        return self.params(x, label)

    def log_prob(self, x, label=None):
        """log p(x) in nats, float32 [B], for model-space images x [B, H, W, C]."""
        return self.head.log_prob(self.params(x, label), x)

    def _track(self, nll):
        return self.track(
            {"loss": nll, "nll": nll, "bits_per_dim": bits_per_dim(nll, self.spec.num_dims)}
        )

    @tf.autograph.experimental.do_not_convert  # Python control flow only; errors stay as raised
    def train_step(self, data):
        grads, (log_p,) = batch_gradients(
            self.trainable_variables,
            lambda x, y: (self.log_prob(x, y),),
            [data["image"], self.label_of(data)],
            self.micro_batch,
        )
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return self._track(-log_p)

    def test_step(self, data):
        return self._track(-self.log_prob(data["image"], self.label_of(data)))

    def score_batch(self, data, seed) -> dict:
        """Exact NLL in nats per image, float32 [B]."""
        del seed
        return {"nll_nats": -self.log_prob(data["image"], self.label_of(data))}

    # -- sampling ------------------------------------------------------------------------------

    def _stepper(self, label, cached: bool):
        return self.stepper(label) if cached else sampling.Reference(self.params, label)

    @tf.autograph.experimental.do_not_convert  # explicit loops; autograph only slows tracing
    def sample(self, seeds, label=None, cached: bool = True):
        """seeds int32 [B, 2] -> float32 [B, H, W, C] model-space samples (raster order)."""
        return sampling.raster_sample(self._stepper(label, cached), self.head, self.spec, seeds)

    @tf.autograph.experimental.do_not_convert
    def complete(self, images, known, seeds, label=None, cached: bool = True):
        """Samples the pixels of images [B, H, W, C] (model space) where known [.., C] is 0."""
        stepper = self._stepper(label, cached)
        return sampling.raster_sample(stepper, self.head, self.spec, seeds, images, known)

    def image_summaries(self, batch, seed) -> dict:
        """Samples (cached sampler), and completions of the bottom halves of eval images
        (unknown half in grey) beside them."""
        n = int(batch["image"].shape[0])
        seeds = rng.row_seeds(seed, n)
        samples = self._functions.get("sample", self.sample)(seeds, self.labels_for(n))
        x = batch["image"][: n // 2]
        label = self.label_of(batch, n // 2)
        known = top_half(tf.shape(x), self.spec.shape[0])
        filled = self._functions.get("complete", self.complete)(x, known, seeds[: n // 2], label)
        shown = tf.where(known > 0, x, 0.5 * self.spec.max_value)
        pairs = tf.stack([self.to_unit(shown), self.to_unit(filled)], 1)
        return {
            "samples": self.to_unit(samples),
            "completions": tf.reshape(pairs, [-1, *self.spec.shape]),
        }

    # -- serving -------------------------------------------------------------------------------

    def serving_functions(self) -> dict:
        """sample, log_prob and complete with validated inputs in data space."""
        spec, cond = self.spec, self.config.conditional

        def label_for(label, n):
            return contract.check_label(label, spec.num_classes, n) if cond else None

        def sample(seed, label=None):
            seed = contract.check_seed(seed)
            x = self.sample(seed, label_for(label, tf.shape(seed)[0]))
            return {"images": spec.to_data(x)}

        def log_prob(images, label=None):
            images = contract.check_images(images, spec)
            lp = self.log_prob(spec.to_model(images), label_for(label, tf.shape(images)[0]))
            return {"log_prob": lp, "bits_per_dim": bits_per_dim(-lp, spec.num_dims)}

        def complete(images, mask, seed, label=None):
            images = contract.check_images(images, spec)
            n = tf.shape(images)[0]
            x = self.complete(
                spec.to_model(images),
                contract.check_mask(mask, n),
                contract.check_seed(seed, n),
                label_for(label, n),
            )
            return {"images": spec.to_data(x)}

        images, seed = contract.image_spec(spec), contract.SEED_SPEC
        mask = tf.TensorSpec([None, *spec.shape], tf.uint8, name="mask")
        sig = lambda fn, *specs: contract.signature(fn, *specs, conditional=cond)  # noqa: E731
        return {
            "sample": sig(sample, seed),
            "log_prob": sig(log_prob, images),
            "complete": sig(complete, images, mask, seed),
        }


def top_half(shape, height: int) -> tf.Tensor:
    """float32 mask of `shape` [B, H, W, C]: 1 on the rows above height // 2."""
    rows = tf.cast(tf.range(height) < height // 2, tf.float32)
    return tf.broadcast_to(rows[None, :, None, None], shape)
