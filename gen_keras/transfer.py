"""Encoder transfer: an autoencoder's encoder, or a VAE's posterior-mean path, into a classifier.

The encoder of `models.autoencoder`, the conv encoder of `models.vae` and the `arch="encoder"`
trunk of `models.classifier` share one layout: conv_1 (3x3, stride 2), conv_2 (3x3, stride 2),
flatten, then a dense code. The autoencoder's code layer is its z; the VAE's posterior layer
outputs [loc, raw scale] (2 x latent units), and its first `latent_dim` columns are the
posterior mean E_q[z|x]: those columns become the classifier's code layer.
"""

from __future__ import annotations

import numpy as np

from gen_keras.config import UsageError, check
from gen_keras.runs import restore_model


def encoder_weights(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(kernel, bias)] of conv_1, conv_2 and the code (posterior mean) layer of an AE or VAE."""
    if model.family == "autoencoder":
        return [tuple(layer.get_weights()) for layer in model.encoder.layers if layer.weights]
    if model.family == "vae":
        check(
            model.config.arch == "conv" and not model.config.conditional,
            f"only an unconditional conv VAE can initialise a classifier (got "
            f"arch={model.config.arch!r}, conditional={model.config.conditional})",
        )
        convs = [tuple(layer.get_weights()) for layer in model.encoder.layers if layer.weights]
        kernel, bias = model.posterior_params.get_weights()
        d = model.config.latent_dim
        return [*convs, (kernel[:, :d], bias[:d])]
    raise UsageError(
        f"cannot take an encoder from a {model.family!r} model: use an autoencoder or VAE run"
    )


def trunk_layers(classifier) -> list:
    """The classifier's weighted trunk layers, in encoder order (conv_1, conv_2, code)."""
    check(
        classifier.config.arch == "encoder",
        "only arch='encoder' classifiers take encoder weights "
        f"(got arch={classifier.config.arch!r})",
    )
    if not classifier.trunk.built:
        classifier.trunk.build((None, *classifier.spec.shape))
    return [layer for layer in classifier.trunk.layers if layer.weights]


def init_from_encoder(classifier, source) -> None:
    """Copies source's encoder (AE) or posterior-mean path (VAE) into the classifier's trunk."""
    weights = encoder_weights(source)
    layers = trunk_layers(classifier)
    want = [tuple(w.shape for w in layer.get_weights()) for layer in layers]
    got = [tuple(w.shape for w in pair) for pair in weights]
    check(
        want == got,
        f"the encoder's layer shapes {got} do not fit the classifier's {want}: give the "
        f"classifier the encoder's filters (hidden) and latent_dim "
        f"(source {source.family}: hidden={source.config.hidden}, "
        f"latent_dim={source.config.latent_dim}) and the same image shape",
    )
    for layer, pair in zip(layers, weights, strict=True):
        layer.set_weights(list(pair))


def init_from_run(classifier, model_dir: str) -> None:
    """Restores an autoencoder or VAE run's latest checkpoint and copies its encoder."""
    source, _ = restore_model(model_dir)
    init_from_encoder(classifier, source)


def warm_start(model) -> None:
    """Applies a model's configured warm start (a classifier's `init_from` run), if any."""
    init_from = getattr(model.config, "init_from", "")
    if init_from:
        init_from_run(model, init_from)
