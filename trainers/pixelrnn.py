"""Trains a PixelRNN: `python -m trainers.pixelrnn --arch=row_lstm|diagonal_bilstm`.

Defaults: static binarized MNIST, 4 recurrent layers of h=16, 1 epoch of batch 32; the
cost on 2 CPUs is in benchmarks/results.md (PixelRNN). `--config=reproduce` is the paper's
7-layer MNIST model, a Diagonal BiLSTM unless `--arch` says otherwise (a preset's values win
over every flag not given). Flags: the shared ones and one per field of `pixelrnn.Config`.
"""

from gen_keras import train
from gen_keras.models import pixelrnn
from trainers import common

common.define_flags("pixelrnn")
common.define_model_flags(
    pixelrnn, "Preset: default (4 layers), small (tests), reproduce (the paper's 7 layers, h=16)."
)


def main(argv):
    del argv
    result = train.fit(
        "pixelrnn",
        common.model_config(pixelrnn),
        common.data_config(),
        common.train_config(),
        verbose=common.verbosity(),
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
