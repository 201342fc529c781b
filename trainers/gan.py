"""Trains a GAN: `python -m trainers.gan --loss=minimax|non_saturating|wgan_gp [--conditional]`."""

import dataclasses

from absl import flags, logging

from gen_keras import train
from gen_keras.config import DataConfig, TrainConfig, check
from gen_keras.models import gan
from trainers import common

common.define_flags(
    TrainConfig(epochs=5, batch_size=64, learning_rate=2e-4, model_dir="runs/gan"),
    DataConfig(binarization="float_symmetric"),
)
flags.DEFINE_enum(
    "config",
    "default",
    ["default", "small", "reproduce"],
    "Preset: default, small (tests), reproduce (Radford et al.'s z=100, 64/128 filters).",
)
flags.DEFINE_enum("loss", "non_saturating", list(gan.LOSSES), "The game the two players play.")
flags.DEFINE_bool("conditional", False, "Label-conditioned G, projection discriminator.")
flags.DEFINE_integer("latent_dim", 64, "Dimensions of the noise z.")
flags.DEFINE_integer("filters", 32, "Filters: G 2f -> f -> channels, D f -> 2f.")
flags.DEFINE_integer(
    "n_critic", None, "Discriminator updates per step (default: 5 for wgan_gp, else 1)."
)
flags.DEFINE_float("gp_weight", 10.0, "Gradient penalty weight lambda (wgan_gp).")
flags.DEFINE_string(
    "classifier",
    "",
    "Classifier export or run dir whose features score samples (FID, KID, coverage) per "
    "epoch and at the end; empty: no sample-quality figures.",
)
flags.DEFINE_integer("fid_samples", 1000, "Generated samples for the per-epoch figures.")
flags.DEFINE_integer("final_samples", 5000, "Generated samples for the end-of-run figures.")
FLAGS = flags.FLAGS
PRESETS = {"default": gan.Config, "small": gan.small, "reproduce": gan.reproduce}


def main(argv):
    del argv
    config = common.model_config(PRESETS[FLAGS.config]())
    train_config = common.train_config()
    if not FLAGS["batch_size"].present:  # one step = n_critic D minibatches of 64
        train_config = dataclasses.replace(train_config, batch_size=64 * config.critic_steps)
    check(
        train_config.batch_size % config.critic_steps == 0,
        f"batch_size={train_config.batch_size} is not a multiple of n_critic="
        f"{config.critic_steps}: a step splits its batch into n_critic D minibatches",
    )
    if not config.classifier:
        logging.warning("no --classifier: FID, KID and class coverage will not be computed")
    result = train.fit(
        "gan", config, common.data_config(), train_config, verbose=common.verbosity()
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
