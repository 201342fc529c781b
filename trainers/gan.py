"""Trains a GAN: `python -m trainers.gan --loss=minimax|non_saturating|wgan_gp [--conditional]`.

Flags: the shared ones (`trainers.common`) and one per field of `gan.Config`.
"""

import dataclasses

from absl import flags, logging

from gen_keras import train
from gen_keras.models import gan
from trainers import common

common.define_flags("gan")
common.define_model_flags(
    gan, "Preset: default, small (tests), reproduce (Radford et al.'s z=100, 64/128 filters)."
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = common.model_config(gan)
    train_config = common.train_config()
    if not FLAGS["batch_size"].present:  # one step = n_critic D minibatches of 64
        train_config = dataclasses.replace(train_config, batch_size=gan.default_batch(config))
    # An undivisible --batch_size is refused by the harness (gan.check_batch), one line.
    if not config.classifier:
        logging.warning("no --classifier: FID, KID and class coverage will not be computed")
    result = train.fit(
        "gan", config, common.data_config(), train_config, verbose=common.verbosity()
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
