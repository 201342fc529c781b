"""Latent pictures of a trained autoencoder or VAE run: `python -m trainers.pictures --model_dir=`.

Writes <model_dir>/pictures/{scatter,interpolation[,manifold]}.png (the manifold grid for
latent_dim=2) and the TensorBoard projector data into <model_dir>/eval, from the run's
latest checkpoint and its eval split. E.g. a 2-D VAE:
    python -m trainers.vae --latent_dim=2 --model_dir=runs/vae_2d
    python -m trainers.pictures --model_dir=runs/vae_2d
"""

import json
import os

from absl import flags

from gen_keras import pictures, runs
from gen_keras.config import DataConfig, check, from_dict
from gen_keras.data import ImageData
from trainers import common

flags.DEFINE_string("model_dir", None, "An autoencoder or VAE run directory.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the run's).")
flags.DEFINE_integer("pairs", 8, "Interpolation strips.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    check(bool(FLAGS.model_dir), "--model_dir is required: an autoencoder or VAE run directory")
    model, step = runs.restore_model(FLAGS.model_dir)
    with open(os.path.join(FLAGS.model_dir, runs.RUN_RECORD)) as f:
        data = from_dict(DataConfig, json.load(f)["data"])
    if FLAGS.data_dir:
        data = from_dict(DataConfig, {**data.__dict__, "data_dir": FLAGS.data_dir})
    paths = pictures.write_all(
        model,
        ImageData(data, data.eval_split, training=False),
        os.path.join(FLAGS.model_dir, "pictures"),
        projector_dir=os.path.join(FLAGS.model_dir, "eval"),
        pairs=FLAGS.pairs,
    )
    print(f"step {step}; pictures: " + ", ".join(paths.values()))


if __name__ == "__main__":
    common.run(main)
