"""Exports a run's latest checkpoint without training.

    python -m trainers.export --model_dir=runs/vae [--model=vae] [--export_dir=saved_models]


Writes <export_dir>/<model>/<next version>/ and refreshes <export_dir>/models.config.
"""

from absl import flags

from gen_keras import export, runs
from trainers import common

flags.DEFINE_string("model_dir", None, "A gen_keras run directory (holds config.json).")
flags.DEFINE_string("model", None, "Export name (default: the run's model family).")
flags.DEFINE_string("export_dir", "saved_models", "Export root.")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model, step = runs.restore_model(FLAGS.model_dir)
    path = export.export(model, FLAGS.export_dir, FLAGS.model)
    print(f"exported step {step} of {FLAGS.model_dir}: {path}")


if __name__ == "__main__":
    common.run(main)
