"""Exports a run's latest checkpoint without training.

    python -m trainers.export --model_dir=runs/vae [--model=vae] [--export_dir=saved_models]


Writes <export_dir>/<model>/<next version>/ and refreshes <export_dir>/models.config. A bad
--model name exits 2; a checkpoint with NaN or Inf weights is refused (exit 1), one line each.
"""

import os
import sys

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
    if FLAGS.model is not None:
        export.check_name(FLAGS.model)  # before the (slow) restore
    model, step = runs.restore_model(FLAGS.model_dir)
    try:
        training = {
            "model_dir": os.path.abspath(FLAGS.model_dir),
            "step": step,
            "train_seconds": runs.read_clock(FLAGS.model_dir).get(step),
        }
        path = export.export(model, FLAGS.export_dir, FLAGS.model, training=training)
    except export.ExportError as e:
        sys.stderr.write(f"error: {FLAGS.model_dir} (step {step}): {e}\n")
        sys.exit(1)
    print(f"exported step {step} of {FLAGS.model_dir}: {path}")


if __name__ == "__main__":
    common.run(main)
