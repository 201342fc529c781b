"""Trains a PixelCNN: `python -m trainers.pixelcnn` (gated, static MNIST, ~25 min on 2 CPUs).

`--arch=pixelcnn|gated --likelihood=bernoulli|categorical|logistic_mixture`; 8-bit data
with `--binarization=uint8`. Exports `sample` (cached sampler), `log_prob`, `complete`.
Flags: the shared ones (`trainers.common`) and one per field of `pixelcnn.Config`.
"""

from gen_keras import train
from gen_keras.models import pixelcnn
from trainers import common

common.define_flags("pixelcnn")
common.define_model_flags(
    pixelcnn, "Preset: default, small (tests), reproduce (the --arch's published MNIST size)."
)


def main(argv):
    del argv
    result = train.fit(
        "pixelcnn",
        common.model_config(pixelcnn),
        common.data_config(),
        common.train_config(),
        verbose=common.verbosity(),
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
