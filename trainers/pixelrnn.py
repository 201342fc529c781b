"""Trains a PixelRNN: `python -m trainers.pixelrnn --arch=row_lstm|diagonal_bilstm`.

Defaults: static binarized MNIST, 4 recurrent layers of h=16, 1 epoch of batch 32; the
cost on 2 CPUs is in benchmarks/results.md (PixelRNN). `--config=reproduce` is the paper's
7-layer MNIST model.
"""

import dataclasses

from absl import flags

from gen_keras import train
from gen_keras.config import TrainConfig
from gen_keras.models import pixelrnn
from trainers import common

common.define_flags(TrainConfig(epochs=1, batch_size=32, model_dir="runs/pixelrnn"))
flags.DEFINE_enum(
    "config",
    "default",
    ["default", "small", "reproduce"],
    "Preset: default (4 layers), small (tests), reproduce (the paper's 7 layers, h=16).",
)
flags.DEFINE_enum("arch", "row_lstm", list(pixelrnn.ARCHS), "Recurrent layer.")
flags.DEFINE_integer("layers", None, "Recurrent layers, with residual connections (preset).")
flags.DEFINE_integer("hidden", None, "h: LSTM units per layer; residual stream 2h (preset).")
flags.DEFINE_integer("kernel_width", None, "k of the Row LSTM's 1 x k input-to-state conv.")
flags.DEFINE_integer("output_hidden", None, "Channels of the ReLU 1x1 layer before the head.")
flags.DEFINE_enum(
    "likelihood",
    "auto",
    ["auto", "bernoulli", "categorical"],
    "Pixel likelihood (auto: bernoulli for binary data, categorical for uint8).",
)
flags.DEFINE_bool("conditional", False, "Condition every recurrent layer on the class label.")
FLAGS = flags.FLAGS
PRESETS = {"default": pixelrnn.default, "small": pixelrnn.small, "reproduce": pixelrnn.reproduce}


def main(argv):
    del argv
    preset = dataclasses.replace(PRESETS[FLAGS.config](), arch=FLAGS.arch)
    config = common.model_config(preset)
    result = train.fit(
        "pixelrnn", config, common.data_config(), common.train_config(), verbose=common.verbosity()
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
