"""Sample quality under a classifier's features: FID, KID, classifier score, class coverage.

For features a [N, D] of generated images and b [M, D] of real images, from one classifier:

    FID = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))        Heusel et al. 2017
    KID = unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3               Binkowski et al. 2018
    classifier score = exp(E_x KL(p(y|x) || p(y)))                    Salimans et al. 2016
    coverage = histogram of argmax_y p(y|x) and its entropy (log K when spread evenly)

FID and KID use the classifier's penultimate features, the classifier score and coverage
its logits: the Inception-network protocol with an MNIST classifier in Inception's place.
MNIST has no standard feature network, so a figure is comparable only with figures under
the same classifier; `Classifier.name` says which one. FID is biased upward at small N
(it falls as N grows); compare FIDs only at equal sample counts. KID is unbiased; its
standard error comes from disjoint subsets.

Images cross into these functions as uint8 [N, H, W, C] in data space, the way they leave
every export's `sample` signature, so the same code scores any model family.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from gen_keras.config import check


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mean [D], covariance [D, D]), float64, unbiased covariance."""
    f = np.asarray(features, np.float64)
    check(f.ndim == 2 and len(f) >= 2, f"features of shape {f.shape}: need [N >= 2, D]")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    tr((S_a S_b)^(1/2)) = tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): the inner matrix is symmetric
    positive semi-definite, so its root comes from eigh, stable where sqrtm is not.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root = _sqrt_psd(cov_a)
    inner = root @ cov_b @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)


def fid(features_a, features_b) -> float:
    """FID between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def mmd2_unbiased(a, b) -> float:
    """Unbiased MMD^2 between a [m, D] and b [n, D] with the cubic polynomial kernel."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    m, n = len(a), len(b)
    kaa = (a @ a.T / d + 1.0) ** 3
    kbb = (b @ b.T / d + 1.0) ** 3
    kab = (a @ b.T / d + 1.0) ** 3
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
        + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
        - 2.0 * kab.mean()
    )


def kid(features_a, features_b, num_subsets: int = 10, seed: int = 0) -> tuple[float, float]:
    """(KID, standard error): the mean unbiased MMD^2 over disjoint random subsets.

    Both sets are cut into `num_subsets` disjoint subsets of min(N, M) // num_subsets
    rows; the estimates are independent, so their standard deviation / sqrt(num_subsets)
    is the standard error of the mean.
    """
    a, b = np.asarray(features_a), np.asarray(features_b)
    size = min(len(a), len(b)) // num_subsets
    check(
        num_subsets >= 2 and size >= 2,
        f"KID needs >= 2 subsets of >= 2 rows: got {len(a)} and {len(b)} rows "
        f"for num_subsets={num_subsets}",
    )
    gen = np.random.default_rng(seed)
    pa = gen.permutation(len(a))[: size * num_subsets].reshape(num_subsets, size)
    pb = gen.permutation(len(b))[: size * num_subsets].reshape(num_subsets, size)
    values = np.array([mmd2_unbiased(a[i], b[j]) for i, j in zip(pa, pb, strict=True)])
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(num_subsets))


def _log_softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def classifier_score(logits) -> float:
    """exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x): in [1, K], K for confident,
    evenly spread predictions (the Inception score on a classifier's classes)."""
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    log_py = np.log(p.mean(0) + 1e-300)
    return float(np.exp(np.mean(np.sum(p * (log_p - log_py), axis=-1))))


def class_coverage(logits) -> dict:
    """Predicted-class histogram: {"class_fractions" [K], "class_entropy" (nats),
    "class_min_fraction"}; a collapsed generator has a low entropy and empty classes."""
    logits = np.asarray(logits)
    k = logits.shape[-1]
    fractions = np.bincount(logits.argmax(-1), minlength=k) / len(logits)
    nonzero = fractions[fractions > 0]
    return {
        "class_fractions": fractions,
        "class_entropy": float(-(nonzero * np.log(nonzero)).sum()),
        "class_min_fraction": float(fractions.min()),
    }


# -- the feature network --------------------------------------------------------------------


class Classifier:
    """A feature network: uint8 images [N, H, W, C] -> (logits [N, K], features [N, D]).

    `fn(images)` returns a dict with "logits" and "features" (a `classify` signature);
    `name` says which classifier it is, for every figure that uses it.
    """

    def __init__(self, fn, name: str, batch: int = 500):
        self.fn, self.name, self.batch = fn, name, batch

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        check(
            images.dtype == np.uint8 and images.ndim == 4,
            f"classifier input: uint8 [N, H, W, C] images, got {images.dtype} {images.shape}",
        )
        logits, features = [], []
        for i in range(0, len(images), self.batch):
            out = self.fn(tf.constant(images[i : i + self.batch]))
            logits.append(np.asarray(out["logits"]))
            features.append(np.asarray(out["features"]))
        return np.concatenate(logits), np.concatenate(features)


class SampleQuality:
    """A classifier and its features of reference images (computed once), to score samples.

    reference: uint8 [M, H, W, C] real images in data space (e.g. the test split).
    """

    def __init__(self, classifier: Classifier, reference, kid_subsets: int = 10):
        self.classifier = classifier
        self.reference = np.asarray(reference)
        self.kid_subsets = kid_subsets
        self.reference_logits, self.reference_features = classifier(self.reference)

    def evaluate(self, samples, seed: int = 0) -> dict:
        """{fid, kid, kid_stderr, classifier_score, class_entropy, class_min_fraction,
        class_fraction_<k>} of uint8 samples [N, H, W, C] against the reference."""
        logits, features = self.classifier(samples)
        return scores(
            logits, features, self.reference_features, kid_subsets=self.kid_subsets, seed=seed
        )


def scores(logits, features, reference_features, kid_subsets: int = 10, seed: int = 0) -> dict:
    """Every figure of a sample set from its classifier outputs and the reference features."""
    kid_value, kid_stderr = kid(features, reference_features, kid_subsets, seed)
    coverage = class_coverage(logits)
    out = {
        "fid": fid(features, reference_features),
        "kid": kid_value,
        "kid_stderr": kid_stderr,
        "classifier_score": classifier_score(logits),
        "class_entropy": coverage["class_entropy"],
        "class_min_fraction": coverage["class_min_fraction"],
    }
    for k, value in enumerate(coverage["class_fractions"]):
        out[f"class_fraction_{k}"] = float(value)
    return out
