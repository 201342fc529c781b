"""Convolutional networks shared by families: the encoder trunk, the classifier trunk and the
transposed-conv decoder (one definition each, so weights transfer between families)."""

from __future__ import annotations

import keras


def encoder_trunk(filters: int, latent_dim: int, name: str = "trunk") -> keras.Sequential:
    """The conv encoder shared by autoencoder and classifier: [B, H, W, C] -> [B, latent].

    Layer order (what `gen_keras.transfer` copies): conv_1, conv_2, flatten, code.
    """
    layers = keras.layers
    return keras.Sequential(
        [
            layers.Conv2D(filters, 3, 2, "same", activation="relu", name="conv_1"),
            layers.Conv2D(2 * filters, 3, 2, "same", activation="relu", name="conv_2"),
            layers.Flatten(name="flatten"),
            layers.Dense(latent_dim, name="code"),
        ],
        name=name,
    )


def convnet_trunk(filters: int, name: str = "trunk") -> keras.Sequential:
    """Two 3x3 conv + 2x2 max-pool blocks (filters, 2 x filters), flattened."""
    layers = keras.layers
    return keras.Sequential(
        [
            layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv_1"),
            layers.MaxPooling2D(2, name="pool_1"),
            layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="conv_2"),
            layers.MaxPooling2D(2, name="pool_2"),
            layers.Flatten(name="flatten"),
        ],
        name=name,
    )


def conv_decoder(shape, filters: int, channels_out: int, name: str = "decoder"):
    """z [B, latent] -> [B, H, W, channels_out]: a dense layer to (H/4, W/4, 2 x filters),
    then two 4x4 stride-2 transposed convs (no 3x3 conv at full size: 4x faster on CPU)."""
    h, w = shape[0], shape[1]
    layers = keras.layers
    return keras.Sequential(
        [
            layers.Dense(h // 4 * w // 4 * 2 * filters, activation="relu"),
            layers.Reshape((h // 4, w // 4, 2 * filters)),
            layers.Conv2DTranspose(filters, 4, 2, "same", activation="relu"),
            layers.Conv2DTranspose(channels_out, 4, 2, "same"),
        ],
        name=name,
    )
