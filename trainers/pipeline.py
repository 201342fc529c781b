"""Runs ExampleGen -> Trainer -> Evaluator -> Pusher: `python -m trainers.pipeline --model=vae`.

Every family: the Evaluator scores NLL (likelihood models; IWAE/ELBO for the VAE),
accuracy (classifier), reconstruction error (autoencoder) or FID/KID on a classifier's
features (GAN: --classifier=<export or run dir>, or without it the pipeline trains one on
the same Examples first). A second run with the same inputs reuses every cached artifact;
a model that is worse than the one serving is not pushed, and the output says why.

Flags: the shared ones (`trainers.common`; those not given take `trainers.<model>`'s
defaults, except the schedule: --epochs=1 --steps_per_epoch=500) and the model fields of
every family (those given must be fields of --model's Config; the rest come from --config).
"""

import dataclasses

from absl import flags

from gen_keras import models
from gen_keras.config import PRESETS, DataConfig, TrainConfig, UsageError
from gen_keras.pipeline import runner
from trainers import common

# The semi-supervised family trains on a labeled subset of its own (trainers.semisupervised).
FAMILIES = tuple(f for f in models.FAMILIES if f != "semisupervised")
MODULES = [models.get(name) for name in FAMILIES]
SCHEDULE = TrainConfig(epochs=1, steps_per_epoch=500)
common.define_config_flags(DataConfig())
common.define_config_flags(SCHEDULE)
common.define_union_model_flags(MODULES)
flags.DEFINE_enum("model", "vae", list(FAMILIES), "Model family.")
flags.DEFINE_enum("config", "small", list(PRESETS), "Model preset (default: the trainer's).")
flags.DEFINE_string("pipeline_root", None, "Artifacts and metadata (default pipelines/<model>).")
flags.DEFINE_integer("eval_examples", 2000, "Eval examples for the Evaluator (0: all).")
flags.DEFINE_multi_string(
    "threshold",
    [],
    "metric=bound: bless only if the metric is no worse than bound (an upper bound for "
    "nll_nats, fid, reconstruction_mse, ...; a lower bound for accuracy, elbo, iwae). "
    "Repeatable.",
)
flags.DEFINE_bool("cache", True, "Reuse outputs of executions whose inputs did not change.")
FLAGS = flags.FLAGS


def _thresholds() -> dict:
    out = {}
    for item in FLAGS.threshold:
        name, _, bound = item.partition("=")
        try:
            out[name] = float(bound)
        except ValueError:
            raise UsageError(
                f"--threshold={item!r}: give metric=number, e.g. nll_nats=90"
            ) from None
    return out


def configs(name: str) -> tuple[DataConfig, TrainConfig]:
    """The family's shared defaults, the pipeline's schedule, and the flags given."""
    for flag in ("model_dir", "export"):
        if FLAGS[flag].present:
            raise UsageError(
                f"--{flag} does not apply to trainers.pipeline: runs live under "
                "--pipeline_root and the Pusher exports a blessed model to --export_dir"
            )
    family_train, family_data = common.DEFAULTS[name]
    data = dataclasses.replace(family_data, **common.given(DataConfig))
    schedule = {"epochs": SCHEDULE.epochs, "steps_per_epoch": SCHEDULE.steps_per_epoch}
    train = dataclasses.replace(family_train, **{**schedule, **common.given(TrainConfig)})
    return data, train


def main(argv):
    del argv
    name = FLAGS.model
    module = models.get(name)
    fields = common.family_fields(module, MODULES)
    data, train = configs(name)
    classifier = fields.get("classifier") or None
    if name == "gan" and classifier is None:  # one pass of trainers.classifier's defaults
        classifier = dataclasses.replace(
            common.DEFAULTS["classifier"][0], epochs=1, steps_per_epoch=None, seed=train.seed
        )
    steps = runner.run_family(
        FLAGS.pipeline_root or f"pipelines/{name}",
        name,
        data=data,
        train=train,
        preset=FLAGS.config,
        model=fields,
        eval_examples=FLAGS.eval_examples or None,
        thresholds=_thresholds(),
        classifier=classifier,
        use_cache=FLAGS.cache,
    )
    for step in steps:
        shown = {k: a.uri or a.properties for k, a in step.outputs.items()}
        print(
            f"{step.component:10s} execution {step.execution_id}"
            f"{' (cached)' if step.cached else ''}: {shown}"
        )
    evaluated, pushed = steps[-2].outputs, steps[-1].outputs["pushed_model"].properties
    blessing = evaluated["blessing"].properties
    print(f"evaluation: {evaluated['evaluation'].properties}")
    print(f"blessed: {blessing['blessed']} ({blessing['reason']})")
    print(
        f"pushed: version {pushed['version']}"
        if pushed["pushed"]
        else f"not pushed: {pushed['reason']}"
    )


if __name__ == "__main__":
    common.run(main)
