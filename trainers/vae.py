"""Trains a VAE: `python -m trainers.vae` (MNIST, static binarization, ~10 min on 2 CPUs).

Flags: the shared ones (`trainers.common`) and one per field of `gen_keras.models.vae.Config`.
"""

from absl import flags

from gen_keras import train
from gen_keras.models import vae
from trainers import common

common.define_flags("vae")
common.define_model_flags(
    vae,
    "Preset: default (conv), small (tests), reproduce (Burda et al. MLP; with --arch=resnet, "
    "pytorch-generative's VAE).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    result = train.fit(
        "vae",
        common.model_config(vae),
        common.data_config(),
        common.train_config(),
        verbose=common.verbosity(),
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
