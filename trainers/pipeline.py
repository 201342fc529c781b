"""Runs ExampleGen -> Trainer -> Evaluator -> Pusher: `python -m trainers.pipeline --model=vae`.

A second run with the same inputs reuses every cached artifact; a model that is worse than
the one serving is not pushed, and the output says why.
"""

from absl import flags

from gen_keras import models
from gen_keras.config import DATA_MODES
from gen_keras.pipeline import runner
from trainers import common

flags.DEFINE_enum("model", "vae", list(models.FAMILIES), "Model family.")
flags.DEFINE_enum(
    "preset",
    "small",
    ["small", "Config", "reproduce"],
    "Model preset (Config: the trainer's default).",
)
flags.DEFINE_string("pipeline_root", None, "Artifacts and metadata (default pipelines/<model>).")
flags.DEFINE_string("export_dir", "saved_models", "Where the Pusher pushes.")
flags.DEFINE_string("dataset", "mnist", "TFDS dataset for ExampleGen.")
flags.DEFINE_string("data_dir", None, "TFDS data dir.")
flags.DEFINE_string("manual_dir", None, "MNIST-format IDX files.")
flags.DEFINE_string("train_split", "train", "TFDS split for Split-train.")
flags.DEFINE_string("eval_split", "test", "TFDS split for Split-eval.")
flags.DEFINE_enum("binarization", "binary_static", DATA_MODES, "Data mode.")
flags.DEFINE_integer("train_steps", 500, "Trainer steps.")
flags.DEFINE_integer("batch_size", 64, "Trainer batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Trainer learning rate.")
flags.DEFINE_integer("eval_examples", 2000, "Eval examples for the Evaluator (0: all).")
flags.DEFINE_float("max_nll_nats", None, "Bless only below this test NLL (nats per image).")
flags.DEFINE_bool("cache", True, "Reuse outputs of executions whose inputs did not change.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    name = FLAGS.model
    steps = runner.run_pipeline(
        FLAGS.pipeline_root or f"pipelines/{name}",
        data={
            "dataset": FLAGS.dataset,
            "data_dir": FLAGS.data_dir,
            "manual_dir": FLAGS.manual_dir,
            "train_split": FLAGS.train_split,
            "eval_split": FLAGS.eval_split,
        },
        trainer={
            "train_steps": FLAGS.train_steps,
            "custom_config": {
                "family": name,
                "preset": FLAGS.preset,
                "binarization": FLAGS.binarization,
                "train": {"batch_size": FLAGS.batch_size, "learning_rate": FLAGS.learning_rate},
            },
        },
        evaluator={
            "binarization": FLAGS.binarization,
            "eval_examples": FLAGS.eval_examples or None,
            "thresholds": {} if FLAGS.max_nll_nats is None else {"nll_nats": FLAGS.max_nll_nats},
        },
        pusher={"export_dir": FLAGS.export_dir, "model_name": name},
        use_cache=FLAGS.cache,
    )
    for step in steps:
        shown = {k: a.uri or a.properties for k, a in step.outputs.items()}
        print(
            f"{step.component:10s} execution {step.execution_id}"
            f"{' (cached)' if step.cached else ''}: {shown}"
        )
    blessing = steps[2].outputs["blessing"].properties
    pushed = steps[3].outputs["pushed_model"].properties
    print(f"evaluation: {steps[2].outputs['evaluation'].properties}")
    print(f"blessed: {blessing['blessed']} ({blessing['reason']})")
    print(
        f"pushed: version {pushed['version']}"
        if pushed["pushed"]
        else f"not pushed: {pushed['reason']}"
    )


if __name__ == "__main__":
    common.run(main)
