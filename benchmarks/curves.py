"""Learning curves: exact test NLL against wall-clock training minutes, resumable.

`python -m benchmarks.curves --family=pixelcnn --arch=pixelcnn --config=reproduce \\
    --segment_minutes=8 --segments=4 --model_dir=runs/curve_pixelcnn`

trains in segments of --segment_minutes of training time (gen_keras.train.fit with
max_train_minutes; each segment resumes the run's last checkpoint), and after each one
appends {minutes, step, nll_nats, nll_bits_per_dim} (exact NLL over the whole test
split) to <model_dir>/curve.json and draws <model_dir>/curve.png (when matplotlib is
installed). Minutes count training only (tracing, evaluation and checkpoints excluded)
and add up across invocations, so rerunning the same command extends the curve past one
session. Static binarization by default (the PixelRNN paper's protocol).

`--reference=FILE` draws another run's curve beside this one (JSON lines with
`train_minutes` and `test_nll_nats`, e.g. a peer library's points measured on the same
test images), for a race at equal training minutes. `--ema_decay=0.999` evaluates the
Polyak-averaged weights (`TrainConfig.ema_decay`), fixed for a run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags

from gen_keras import train
from gen_keras.config import DataConfig, TrainConfig
from gen_keras.models import pixelcnn, pixelrnn
from trainers import common

try:  # the picture is optional; the JSON is the record
    from matplotlib import pyplot
except ImportError:
    pyplot = None

FAMILIES = {"pixelcnn": pixelcnn, "pixelrnn": pixelrnn}
flags.DEFINE_enum("family", "pixelcnn", list(FAMILIES), "Model family.")
flags.DEFINE_string("arch", "pixelcnn", "The family's architecture (Config.arch).")
flags.DEFINE_enum("config", "reproduce", ["default", "small", "reproduce"], "Model preset.")
flags.DEFINE_string("binarization", "binary_static", "Data mode.")
flags.DEFINE_float("segment_minutes", 8.0, "Training minutes between two curve points.")
flags.DEFINE_integer("segments", 1, "Curve points to add in this invocation.")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("lr_warmup_steps", 0, "Linear learning-rate warm-up steps.")
flags.DEFINE_float("lr_decay", 1.0, "Per-step learning-rate decay after the warm-up.")
flags.DEFINE_float("ema_decay", 0.0, "Polyak averaging of the weights for evaluation (0: off).")
flags.DEFINE_string("model_dir", None, "Run directory (checkpoints, curve.json, curve.png).")
flags.DEFINE_string("reference", None, "JSON lines {train_minutes, test_nll_nats} to draw too.")
flags.DEFINE_string("reference_name", "reference", "Legend of the --reference curve.")
FLAGS = flags.FLAGS


def _config():
    module = FAMILIES[FLAGS.family]
    if FLAGS.config == "reproduce":
        return module.reproduce(FLAGS.arch)
    base = module.small() if FLAGS.config == "small" else module.Config(arch=FLAGS.arch)
    return dataclasses.replace(base, arch=FLAGS.arch)


def _load(path) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"points": []}


def read_reference(path) -> list[dict]:
    """Points {minutes, nll_nats} from JSON lines {train_minutes, test_nll_nats, ...}."""
    points = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                points.append(
                    {"minutes": record["train_minutes"], "nll_nats": record["test_nll_nats"]}
                )
            except KeyError as e:
                raise ValueError(f"{path}:{number}: a reference point needs {e}") from None
    return sorted(points, key=lambda p: p["minutes"])


def draw(curve, path, reference=None, reference_name="reference") -> bool:
    """Draws curve["points"] (and reference points) as a PNG; False without matplotlib."""
    if pyplot is None:
        return False
    figure, axes = pyplot.subplots(figsize=(5, 3.5))
    lines = [("gen_keras", curve["points"])]
    if reference:
        lines.append((reference_name, reference))
    for label, points in lines:
        axes.plot(
            [p["minutes"] for p in points], [p["nll_nats"] for p in points], "o-", label=label
        )
    if reference:
        axes.legend()
    axes.set_xlabel("training minutes (this CPU)")
    axes.set_ylabel("exact test NLL (nats)")
    axes.set_title(curve["name"])
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def main(argv):
    del argv
    config = _config()
    model_dir = FLAGS.model_dir or f"runs/curve_{FLAGS.family}_{FLAGS.arch}_{FLAGS.config}"
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "curve.json")
    curve = _load(path)
    reference = read_reference(FLAGS.reference) if FLAGS.reference else None
    curve.update(
        name=f"{FLAGS.family} {FLAGS.arch} ({FLAGS.config}), {FLAGS.binarization}",
        config=dataclasses.asdict(config),
        batch_size=FLAGS.batch_size,
        ema_decay=FLAGS.ema_decay,
        lr_warmup_steps=FLAGS.lr_warmup_steps,
        lr_decay=FLAGS.lr_decay,
    )
    if FLAGS.segments == 0:  # redraw only (e.g. after the reference's points arrived)
        draw(curve, os.path.join(model_dir, "curve.png"), reference, FLAGS.reference_name)
    for _ in range(FLAGS.segments):
        done = curve["points"][-1]["minutes"] if curve["points"] else 0.0
        train_config = TrainConfig(
            batch_size=FLAGS.batch_size,
            epochs=10_000,  # the clock, not the epochs, ends each segment
            learning_rate=FLAGS.learning_rate,
            model_dir=model_dir,
            export=False,
            jit_compile="off",
            checkpoint_every_steps=500,
            max_train_minutes=FLAGS.segment_minutes,
            ema_decay=FLAGS.ema_decay,
            lr_warmup_steps=FLAGS.lr_warmup_steps,
            lr_decay=FLAGS.lr_decay,
        )
        start = time.monotonic()
        run = train.fit(
            FLAGS.family,
            config,
            DataConfig(binarization=FLAGS.binarization),
            train_config,
            verbose=common.verbosity(),
        )
        point = {
            "minutes": done + FLAGS.segment_minutes,
            "step": run.step,
            "nll_nats": run.final_metrics["nll_nats"],
            "nll_bits_per_dim": run.final_metrics["nll_bits_per_dim"],
            "segment_wall_minutes": (time.monotonic() - start) / 60,
        }
        curve["points"].append(point)
        with open(path, "w") as f:
            json.dump(curve, f, indent=1)
        draw(curve, os.path.join(model_dir, "curve.png"), reference, FLAGS.reference_name)
        print(json.dumps(point))


if __name__ == "__main__":
    common.run(main)
