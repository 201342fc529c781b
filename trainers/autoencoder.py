"""Trains a (denoising) conv autoencoder: `python -m trainers.autoencoder` (MNIST, ~5 min).

At the end it writes the latent pictures into <model_dir>/pictures/ (scatter of the test
codes, interpolation strips, and with --latent_dim=2 the decoded manifold grid) and the
TensorBoard projector data into <model_dir>/eval.
"""

import os
import types

import tensorflow as tf
from absl import flags

from gen_keras import pictures, train
from gen_keras.data import ImageData
from gen_keras.models import autoencoder
from trainers import common

common.define_flags("autoencoder")
common.define_model_flags(
    autoencoder,
    "Preset: default, small (tests), reproduce (the denoising encoder of the features benchmark).",
)
flags.DEFINE_bool("pictures", True, "Write latent pictures and projector data at the end.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config, data = common.model_config(autoencoder), common.data_config()
    cfg = common.train_config()
    result = train.fit("autoencoder", config, data, cfg, verbose=common.verbosity())
    common.report(result)
    # Under multi-worker training only the chief writes (TF_CONFIG names it).
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if FLAGS.pictures and train.is_chief(types.SimpleNamespace(cluster_resolver=resolver)):
        eval_data = ImageData(data, data.eval_split, training=False)
        paths = pictures.write_all(
            result.model,
            eval_data,
            os.path.join(cfg.model_dir, "pictures"),
            projector_dir=os.path.join(cfg.model_dir, "eval"),
        )
        print("pictures: " + ", ".join(paths.values()))


if __name__ == "__main__":
    common.run(main)
