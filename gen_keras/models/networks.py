"""Convolutional networks shared by families: the encoder trunk, the classifier trunk, the
transposed-conv decoder (one definition each, so weights transfer between families) and the
residual encoder/decoder of pytorch-generative's VAE."""

from __future__ import annotations

import keras

from gen_keras.layers.conv import Conv2D, Conv2DTranspose
from gen_keras.layers.masked import unfused_relu


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


class ResidualBlock(keras.layers.Layer):
    """x + 1x1(ReLU(3x3(ReLU(x)))): [B, H, W, channels] -> the same shape, `hidden` channels
    inside (pytorch-generative's `vaes.ResidualBlock`). In the training step's precision
    (gen_keras.layers.conv)."""

    def __init__(self, channels: int, hidden: int, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.conv = Conv2D(hidden, 3, padding="same", name="conv")
        self.project = Conv2D(channels, 1, name="project")

    def call(self, x):
        # unfused_relu: grappler's remapper would otherwise fuse the previous block's conv,
        # bias, add and this ReLU and drop the add the residual still reads (MaskedConv2D's
        # ResidualBlock has the same guard).
        return x + self.project(keras.activations.relu(self.conv(unfused_relu(x))))


def _residual_stack(channels: int, hidden: int, blocks: int, name: str) -> list:
    return [ResidualBlock(channels, hidden, name=f"{name}_res_{i + 1}") for i in range(blocks)] + [
        keras.layers.ReLU(name=f"{name}_relu", autocast=False)
    ]


def residual_encoder(
    stages: int, channels: int, hidden: int, blocks: int, out_channels: int, name="encoder"
) -> keras.Sequential:
    """[B, H, W, C] -> [B, H / 2^stages, W / 2^stages, out_channels] (H, W multiples of
    2^stages). Per stage: a 4x4 stride-2 conv to `channels`, ReLU, `blocks` residual blocks
    and a ReLU, a 3x3 conv (to `out_channels` in the last stage): pytorch-generative's
    `vaes.Encoder` stacked once per stride-2 stage, as its VAE's reproduce() builds it.
    Computes in the training step's precision (gen_keras.layers.precision), its output too."""
    layers = []
    for i in range(stages):
        layers += [
            Conv2D(channels, 4, 2, "same", activation="relu", name=f"down_{i + 1}"),
            *_residual_stack(channels, hidden, blocks, f"stage_{i + 1}"),
            Conv2D(
                out_channels if i == stages - 1 else channels,
                3,
                padding="same",
                name=f"out_{i + 1}",
            ),
        ]
    return keras.Sequential(layers, name=name)


def residual_decoder(
    stages: int, channels: int, hidden: int, blocks: int, out_channels: int, name="decoder"
) -> keras.Sequential:
    """[B, h, w, latent channels] -> [B, h * 2^stages, w * 2^stages, out_channels]. Per stage:
    a 3x3 conv to `channels`, `blocks` residual blocks and a ReLU, a 4x4 stride-2 transposed
    conv (to `out_channels` in the last stage): pytorch-generative's `vaes.Decoder`.
    Computes in the training step's precision (gen_keras.layers.precision), its output too."""
    layers = []
    for i in range(stages):
        layers += [
            Conv2D(channels, 3, padding="same", name=f"in_{i + 1}"),
            *_residual_stack(channels, hidden, blocks, f"stage_{i + 1}"),
            Conv2DTranspose(
                out_channels if i == stages - 1 else channels, 4, 2, "same", name=f"up_{i + 1}"
            ),
        ]
    return keras.Sequential(layers, name=name)
