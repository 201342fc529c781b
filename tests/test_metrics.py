"""Sample-quality metrics: FID against closed forms, unbiased KID, classifier score, coverage,
and the sanity of FID under a real (small) MNIST classifier; any export's samples scored."""

import os

import numpy as np
import pytest

from gen_keras import metrics, runs
from gen_keras.config import DataConfig, UsageError
from gen_keras.data import ImageData


def _random_cov(gen, d):
    a = gen.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_closed_forms():
    gen = np.random.default_rng(0)
    d = 5
    mu_a, mu_b = gen.normal(size=d), gen.normal(size=d)
    # Diagonal (commuting) covariances: |mu_a - mu_b|^2 + sum (sqrt(a) - sqrt(b))^2.
    va, vb = gen.uniform(0.5, 2.0, d), gen.uniform(0.5, 2.0, d)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    got = metrics.frechet_distance(mu_a, np.diag(va), mu_b, np.diag(vb))
    assert got == pytest.approx(expected, rel=1e-9)
    # Full covariances: tr((S_a S_b)^(1/2)) = sum of sqrt of the (real, positive) eigenvalues
    # of the non-symmetric product, an independent way to the same number.
    sa, sb = _random_cov(gen, d), _random_cov(gen, d)
    tr_sqrt = np.sqrt(np.linalg.eigvals(sa @ sb).real).sum()
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(mu_a, sa, mu_a, sa) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_gaussian_samples_approaches_the_population_value():
    gen = np.random.default_rng(1)
    d, n = 4, 40_000
    mu_a, mu_b = np.zeros(d), np.full(d, 0.5)
    sa, sb = _random_cov(gen, d), _random_cov(gen, d)
    a = gen.multivariate_normal(mu_a, sa, size=n)
    b = gen.multivariate_normal(mu_b, sb, size=n)
    population = metrics.frechet_distance(mu_a, sa, mu_b, sb)
    assert metrics.fid(a, b) == pytest.approx(population, rel=0.05)
    assert metrics.fid(a, b) == pytest.approx(metrics.fid(b, a), rel=1e-9)
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_the_unbiased_polynomial_mmd():
    gen = np.random.default_rng(2)
    a, b = gen.normal(size=(6, 3)), gen.normal(1.0, 1.0, size=(5, 3))
    k = lambda x, y: (x @ y / 3 + 1) ** 3  # noqa: E731
    kaa = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
    kbb = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    kab = sum(k(x, y) for x in a for y in b) / 30
    assert metrics.mmd2_unbiased(a, b) == pytest.approx(kaa + kbb - 2 * kab, rel=1e-9)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    gen = np.random.default_rng(3)
    a, b = gen.normal(size=(2000, 8)), gen.normal(size=(2000, 8))
    same, same_se = metrics.kid(a, b, num_subsets=10)
    assert abs(same) < 4 * same_se and same_se > 0  # unbiased: can be negative
    shifted, shifted_se = metrics.kid(a, b + 0.3, num_subsets=10)
    assert shifted > 10 * shifted_se
    with pytest.raises(UsageError, match="KID needs"):
        metrics.kid(a[:5], b[:5], num_subsets=10)


def test_classifier_score_and_class_coverage():
    eye = 20.0 * np.eye(10)
    balanced, one_class = np.tile(eye, (5, 1)), np.tile(eye[3], (50, 1))
    assert metrics.classifier_score(balanced) == pytest.approx(10.0, rel=1e-3)
    assert metrics.classifier_score(one_class) == pytest.approx(1.0, rel=1e-6)
    assert metrics.classifier_score(np.zeros([50, 10])) == pytest.approx(1.0, rel=1e-6)
    cov = metrics.class_coverage(balanced)
    np.testing.assert_allclose(cov["class_fractions"], 0.1)
    assert cov["class_entropy"] == pytest.approx(np.log(10)) and cov["class_min_fraction"] == 0.1
    cov = metrics.class_coverage(one_class)
    assert cov["class_entropy"] == 0.0 and cov["class_min_fraction"] == 0.0
    assert cov["class_fractions"][3] == 1.0


def _images(split, mnist_dir, mode="uint8"):
    data = ImageData(
        DataConfig(data_dir=mnist_dir, binarization=mode, download=False), split, training=False
    )
    batches = list(data.dataset(1000))
    images = np.concatenate([b["image"].numpy() for b in batches]).astype(np.uint8)
    return images, np.concatenate([b["label"].numpy() for b in batches])


@pytest.fixture(scope="module")
def features(mnist_classifier, mnist_dir):
    """Small-classifier outputs of 1000 test digits, 1000 train digits, 1000 train ones and
    1000 uniform-noise images."""
    classifier = runs.load_classifier(mnist_classifier.export_path)
    test, _ = _images("test[:1000]", mnist_dir)
    train, labels = _images("train[4000:12000]", mnist_dir)
    noise = np.random.default_rng(0).integers(0, 256, test.shape).astype(np.uint8)
    sets = {"test": test, "train": train[:1000], "ones": train[labels == 1][:1000], "noise": noise}
    return classifier, {name: classifier(images) for name, images in sets.items()}


def test_fid_sanity_under_a_real_classifier(features):
    _, out = features
    test = out["test"][1]
    real = metrics.fid(test, out["train"][1])
    single = metrics.fid(test, out["ones"][1])
    noise = metrics.fid(test, out["noise"][1])
    # measured with this fixture: 0.38, 74 and 80 (features of 32 units)
    assert real < 0.05 * single and real < 0.05 * noise, (real, single, noise)
    kid_real, se = metrics.kid(test, out["train"][1])
    kid_single, se_single = metrics.kid(test, out["ones"][1])
    assert kid_single > 10 * se_single and kid_single > 20 * max(kid_real, se)


def test_coverage_flags_the_single_class_set_and_passes_the_test_set(features):
    _, out = features
    test, ones = metrics.class_coverage(out["test"][0]), metrics.class_coverage(out["ones"][0])
    assert test["class_min_fraction"] >= 0.05 and test["class_entropy"] > 0.95 * np.log(10)
    assert ones["class_fractions"].argmax() == 1 and ones["class_entropy"] < 0.5
    assert metrics.classifier_score(out["test"][0]) > 3 * metrics.classifier_score(out["ones"][0])


def test_sample_quality_scores_samples_against_a_reference(features, mnist_dir):
    classifier, _ = features
    test, _ = _images("test[:1000]", mnist_dir)
    quality = metrics.SampleQuality(classifier, test[:500])
    scores = quality.evaluate(test[500:])
    assert scores["fid"] == pytest.approx(
        metrics.fid(classifier(test[500:])[1], classifier(test[:500])[1]), rel=1e-9
    )
    assert {"kid", "kid_stderr", "classifier_score", "class_entropy"} <= set(scores)
    assert sum(scores[f"class_fraction_{k}"] for k in range(10)) == pytest.approx(1.0)


def test_the_classifier_loads_from_export_model_root_and_run_directory(mnist_classifier):
    images = (np.arange(4 * 28 * 28).reshape(4, 28, 28, 1) % 256).astype(np.uint8)
    version = runs.load_classifier(mnist_classifier.export_path)
    root = runs.load_classifier(os.path.dirname(mnist_classifier.export_path))
    run = runs.load_classifier(mnist_classifier.model_dir)
    assert version.name == root.name == os.path.abspath(mnist_classifier.export_path)
    assert "step 60" in run.name
    for other in (root, run):
        np.testing.assert_allclose(other(images)[1], version(images)[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(UsageError, match="neither a classifier export"):
        runs.load_classifier("/nonexistent/classifier")
    with pytest.raises(UsageError, match="uint8"):
        version(images.astype(np.float32))


def test_vae_export_samples_are_scored_through_its_sample_signature(
    vae_run, features, mnist_classifier
):
    classifier, out = features
    samples = runs.sample_from_export(vae_run.export_path, 300, seed=1)
    assert samples.shape == (300, 28, 28, 1) and samples.dtype == np.uint8
    assert set(np.unique(samples)) <= {0, 1}  # a binary model's data space
    again = runs.sample_from_export(os.path.dirname(vae_run.export_path), 300, seed=1)
    np.testing.assert_array_equal(samples, again)  # the same seeds, the latest version
    logits, feats = classifier(samples * np.uint8(255))
    assert np.isfinite(metrics.fid(feats, out["test"][1]))
    with pytest.raises(UsageError, match="holds no SavedModel"):
        runs.sample_from_export("/nonexistent/export", 3)
    with pytest.raises(UsageError, match="no 'sample' signature"):
        runs.sample_from_export(mnist_classifier.export_path, 3)
