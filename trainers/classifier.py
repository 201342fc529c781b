"""Trains an MNIST classifier: `python -m trainers.classifier` (>= 99.0% test accuracy).

The default convnet is also the FID/KID feature network (`Classifier.features`). With
`--arch=encoder --init_from=<autoencoder or VAE run>` its trunk starts from that encoder;
`--freeze_trunk --features=0` trains a linear probe of the code. Flags: the shared ones and
one per field of `classifier.Config`.
"""

from gen_keras import train
from gen_keras.models import classifier
from trainers import common

common.define_flags("classifier")
common.define_model_flags(
    classifier, "Preset: default (the FID convnet), small (tests), reproduce (= default)."
)


def main(argv):
    del argv
    result = train.fit(
        "classifier",
        common.model_config(classifier),
        common.data_config(),
        common.train_config(),
        verbose=common.verbosity(),
    )
    common.report(result)


if __name__ == "__main__":
    common.run(main)
