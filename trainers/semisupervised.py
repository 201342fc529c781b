"""Semi-supervised MNIST: `python -m trainers.semisupervised --labels_per_class=10 --method=m2`.

M2 / M1+M2 (Kingma et al. 2014) with a conv q(y|x) and pseudo-label consistency
(`gen_keras.models.semisupervised`); `--method=supervised` is the labels-only baseline
with the same classifier and augmentation; `--method=m1m2 --m1_from=<VAE model_dir>`
runs M2 on a pretrained VAE's latent codes. Trains on train[:50000] (labeled subset drawn
from it by --seed), validates on train[50000:], reports the test split once at the end.
"""

import dataclasses

from absl import flags

from gen_keras import semisupervised
from gen_keras.models import semisupervised as model_lib
from trainers import common

common.define_flags("semisupervised")
common.define_model_flags(
    model_lib, "Preset: default (M2 + consistency), small (tests), reproduce (the paper's M2)."
)
flags.DEFINE_string("test_split", "test", "Split measured once at the end (never for choices).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = common.model_config(model_lib)
    if not FLAGS["label_seed"].present:
        config = dataclasses.replace(config, label_seed=FLAGS.seed)
    result = semisupervised.fit(
        config,
        common.data_config(),
        common.train_config(),
        test_split=FLAGS.test_split,
        verbose=common.verbosity(),
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
