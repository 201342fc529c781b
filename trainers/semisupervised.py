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
from gen_keras.config import DataConfig, TrainConfig
from gen_keras.models import semisupervised as model_lib
from trainers import common

common.define_flags(
    TrainConfig(epochs=30, batch_size=128, model_dir="runs/semisupervised"),
    DataConfig(
        binarization="binary_dynamic", train_split="train[:50000]", eval_split="train[50000:]"
    ),
)
flags.DEFINE_enum(
    "config", "default", ["default", "small", "paper_m2"], "Preset (paper_m2: no consistency)."
)
flags.DEFINE_string("test_split", "test", "Split measured once at the end (never for choices).")
_HELP = {
    "method": "m2 | m1m2 (M2 on a pretrained VAE's z; needs --m1_from) | supervised (baseline).",
    "labels_per_class": "Labeled images per class, drawn from train_split by --label_seed.",
    "label_seed": "Seed of the labeled draw (default: --seed).",
    "m1_from": "method=m1m2: model_dir of a gen_keras VAE run (M1).",
}
for _field in dataclasses.fields(model_lib.Config):
    _default = getattr(model_lib.Config, _field.name)
    _help = _HELP.get(_field.name, f"Model config field {_field.name} (see models/semisupervised).")
    _define = {
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
        str: flags.DEFINE_string,
    }[type(_default)]
    _define(_field.name, _default, _help)
FLAGS = flags.FLAGS
PRESETS = {"default": model_lib.Config, "small": model_lib.small, "paper_m2": model_lib.paper_m2}


def main(argv):
    del argv
    config = common.model_config(PRESETS[FLAGS.config]())
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
