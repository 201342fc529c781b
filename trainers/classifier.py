"""Trains an MNIST classifier: `python -m trainers.classifier` (>= 99.0% test accuracy).

The default convnet is also the FID/KID feature network (`Classifier.features`). With
`--arch=encoder --init_from=<autoencoder or VAE run>` its trunk starts from that encoder;
`--freeze_trunk --features=0` trains a linear probe of the code.
"""

from absl import flags

from gen_keras import train
from gen_keras.config import DataConfig, TrainConfig
from gen_keras.models import classifier
from trainers import common

common.define_flags(
    TrainConfig(epochs=6, batch_size=128, model_dir="runs/classifier"),
    DataConfig(binarization="float"),
)
flags.DEFINE_enum(
    "config", "default", ["default", "small"], "Preset: default (the FID convnet), small (tests)."
)
flags.DEFINE_enum(
    "arch", "convnet", ["convnet", "encoder"], "Trunk: pooling convnet, or the AE/VAE encoder."
)
flags.DEFINE_integer("filters", 32, "Channels of the first conv (the second has 2x).")
flags.DEFINE_integer("latent_dim", 16, "arch=encoder: units of the code layer.")
flags.DEFINE_integer("features", 128, "Units of the ReLU feature layer (0: none).")
flags.DEFINE_float("dropout", 0.5, "Dropout rate on the features during training.")
flags.DEFINE_integer("shift", 2, "Training images move by up to this many pixels (0: none).")
flags.DEFINE_string("init_from", "", "An autoencoder or VAE model_dir to initialise the trunk.")
flags.DEFINE_bool("freeze_trunk", False, "Train only the layers after the trunk.")
FLAGS = flags.FLAGS
PRESETS = {"default": classifier.Config, "small": classifier.small}


def main(argv):
    del argv
    config = common.model_config(PRESETS[FLAGS.config]())
    result = train.fit(
        "classifier",
        config,
        common.data_config(),
        common.train_config(),
        verbose=common.verbosity(),
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
