"""Trains a PixelCNN: `python -m trainers.pixelcnn` (gated, static MNIST, ~25 min on 2 CPUs).

`--arch=pixelcnn|gated --likelihood=bernoulli|categorical|logistic_mixture`; 8-bit data
with `--binarization=uint8`. Exports `sample` (cached sampler), `log_prob`, `complete`.
"""

from absl import flags

from gen_keras import train
from gen_keras.config import TrainConfig
from gen_keras.models import pixelcnn
from trainers import common

common.define_flags(TrainConfig(epochs=1, batch_size=64, model_dir="runs/pixelcnn"))
flags.DEFINE_enum(
    "config",
    "default",
    ["default", "small", "reproduce"],
    "Preset: default, small (tests), reproduce (the --arch's published MNIST size).",
)
flags.DEFINE_enum("arch", "gated", list(pixelcnn.ARCHS), "PixelCNN (2016a) or Gated (2016b).")
flags.DEFINE_enum(
    "likelihood",
    "auto",
    list(pixelcnn.LIKELIHOODS),
    "Pixel likelihood (auto: bernoulli for binary data, categorical for uint8).",
)
flags.DEFINE_integer("num_mixtures", 5, "Components of the logistic mixture likelihood.")
flags.DEFINE_integer("hidden", 16, "Gated: channels per stack; pixelcnn: block inner width.")
flags.DEFINE_integer("layers", 6, "Gated layers or residual blocks.")
flags.DEFINE_integer("kernel_size", 3, "Kernel of the blocks (odd).")
flags.DEFINE_integer("first_kernel_size", 7, "Kernel of the first, mask-A layer (odd).")
flags.DEFINE_integer("output_hidden", 32, "Channels of the output layer and gated skips.")
flags.DEFINE_integer("skip_channels", 0, "Gated: channels of the skips (0: output_hidden).")
flags.DEFINE_enum(
    "vertical",
    "square",
    list(pixelcnn.VERTICALS),
    "Gated vertical stack: square (2016b) or split (pytorch-generative).",
)
flags.DEFINE_bool("conditional", False, "Condition every block on the class label.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    presets = {"default": pixelcnn.Config, "small": pixelcnn.small}
    base = (
        pixelcnn.reproduce(FLAGS.arch) if FLAGS.config == "reproduce" else presets[FLAGS.config]()
    )
    config = common.model_config(base)
    result = train.fit(
        "pixelcnn", config, common.data_config(), common.train_config(), verbose=common.verbosity()
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
