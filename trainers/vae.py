"""Trains a VAE: `python -m trainers.vae` (MNIST, static binarization, ~10 min on 2 CPUs)."""

from absl import flags

from gen_keras import train
from gen_keras.config import TrainConfig
from gen_keras.models import vae
from trainers import common

common.define_flags(TrainConfig(epochs=12, batch_size=128, model_dir="runs/vae"))
flags.DEFINE_enum(
    "config",
    "default",
    ["default", "small", "reproduce"],
    "Preset: default (conv), small (tests), reproduce (Burda et al. MLP).",
)
flags.DEFINE_enum("arch", "conv", ["conv", "mlp"], "Encoder/decoder architecture.")
flags.DEFINE_integer("latent_dim", 32, "Latent dimensions.")
flags.DEFINE_integer("hidden", 32, "conv: filters of the first layer; mlp: units per layer.")
flags.DEFINE_enum(
    "likelihood",
    "auto",
    ["auto", "bernoulli", "categorical", "logistic_mixture"],
    "Pixel likelihood (auto: bernoulli for binary data, categorical for uint8).",
)
flags.DEFINE_integer("num_mixtures", 5, "Components of the logistic mixture likelihood.")
flags.DEFINE_enum("kl", "analytic", ["analytic", "mc"], "KL term: analytic or Monte Carlo.")
flags.DEFINE_integer("train_k", 1, "Importance samples of the training objective (1: ELBO).")
flags.DEFINE_integer("eval_k", 100, "Importance samples of the final test IWAE bound.")
flags.DEFINE_integer(
    "export_k", 16, "Importance samples of the exported log_prob (latency grows with k)."
)
flags.DEFINE_bool("conditional", False, "Condition encoder and decoder on the class label.")
FLAGS = flags.FLAGS
PRESETS = {"default": vae.Config, "small": vae.small, "reproduce": vae.reproduce}


def main(argv):
    del argv
    config = common.model_config(PRESETS[FLAGS.config]())
    result = train.fit(
        "vae", config, common.data_config(), common.train_config(), verbose=common.verbosity()
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
