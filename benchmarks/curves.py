"""Learning curves: a test figure against wall-clock training minutes, resumable, any family.

`python -m benchmarks.curves --family=pixelcnn --arch=pixelcnn --config=reproduce \\
    --segment_minutes=8 --segments=4 --model_dir=runs/curve_pixelcnn`

trains in segments of --segment_minutes of training time (gen_keras.train.fit with
max_train_minutes; each segment resumes the run's last checkpoint), and after each one
appends the run's end-of-segment figures on the eval split (the test split by default) to
<model_dir>/curve.json and draws the curve's figure against minutes in
<model_dir>/curve.png (when matplotlib is installed). A point's minutes are the run's
training clock (`RunResult.train_seconds`: tracing, evaluation and checkpoints excluded,
resumes included), so rerunning the same command extends the curve past one session, and
a segment killed half-way costs nothing but its time: the next one resumes its last
checkpoint and its clock.

The figure drawn (`curve.json`'s "metric"):
- pixelcnn, pixelrnn on binary data: the exact NLL in nats (static binarization by
  default, the PixelRNN paper's protocol); on 8-bit data (--binarization=uint8), bits/dim;
- vae: -IWAE_{eval_k} in nats (a bound on the NLL; --train_k > 1 trains on IWAE);
- gan: FID on the features of --classifier (an export or run of trainers.classifier),
  from --final_samples samples (required: a GAN has no likelihood to draw).

Flags: --family, --config (the family's preset, default `reproduce`), the model fields of
the four families (those given must be fields of --family's Config), and the shared data
and training flags of the trainers (those not given take `trainers.<family>`'s defaults,
except that the clock ends each segment, no export is written, XLA is off and a checkpoint
is saved every 500 steps).

`--targets=81.30,79.20` states, per published figure, how far the curve's last point is from
it and the training hours at which the curve would reach it if its recent slope held (a
straight line through its last `FIT_POINTS` points against log-minutes: a figure that gains
the same amount per doubling of training time). Real curves flatten as they near what the
model can reach, so the hours are a lower bound, not a forecast. They are written to
curve.json ("targets") and drawn as dashed lines.

`--overview=all.png --runs=DIR,DIR,...` only draws the curves of finished runs in one PNG
(a panel per figure, a line per run, named by its directory).

`--reference=FILE` draws another run's curve beside this one (JSON lines with
`train_minutes` and `test_<metric>`, e.g. a peer library's `test_nll_nats` measured on the
same test images), for a race at equal training minutes. `--ema_decay=0.999` evaluates the
Polyak-averaged weights (`TrainConfig.ema_decay`), fixed for a run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time

from absl import flags

from gen_keras import checkpoints, models, runs, train
from gen_keras.config import PRESETS, DataConfig, TrainConfig, UsageError, check, preset
from trainers import common

try:  # the picture is optional; the JSON is the record
    from matplotlib import pyplot
except ImportError:
    pyplot = None

FAMILIES = ("pixelcnn", "pixelrnn", "vae", "gan")
MODULES = [models.get(name) for name in FAMILIES]
# The clock, not the epochs, ends each segment.
SCHEDULE = TrainConfig(epochs=10_000, export=False, jit_compile="off", checkpoint_every_steps=500)
LABELS = {
    "nll_nats": "test NLL (nats)",
    "nll_bits_per_dim": "test NLL (bits/dim)",
    "fid": "FID (classifier features)",
}
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so its helpers import anywhere)."""
    common.define_config_flags(DataConfig())
    common.define_config_flags(SCHEDULE)
    common.define_union_model_flags(MODULES)
    flags.DEFINE_enum("family", "pixelcnn", list(FAMILIES), "Model family.")
    flags.DEFINE_enum("config", "reproduce", list(PRESETS), "Model preset (fields given win).")
    flags.DEFINE_float("segment_minutes", 8.0, "Training minutes between two curve points.")
    flags.DEFINE_integer("segments", 1, "Curve points to add in this invocation (0: redraw).")
    flags.DEFINE_string("reference", None, "JSON lines {train_minutes, test_<metric>} to draw.")
    flags.DEFINE_string("reference_name", "reference", "Legend of the --reference curve.")
    flags.DEFINE_list("targets", [], "Published figures to state the distance and hours to.")
    flags.DEFINE_string("overview", None, "Only draw the curves of --runs into this PNG.")
    flags.DEFINE_list("runs", [], "Run directories whose curve.json --overview draws.")


def metric_for(family: str, data: DataConfig, model_config) -> str:
    """The figure a curve of `family` draws (a key of the run's final metrics)."""
    if family == "gan":
        check(
            bool(model_config.classifier),
            "--family=gan draws FID against minutes: give --classifier=<an export or run dir "
            "of trainers.classifier>",
        )
        return "fid"
    return "nll_nats" if data.binarization.startswith("binary") else "nll_bits_per_dim"


def _load(path) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"points": []}


def read_reference(path, metric: str = "nll_nats") -> list[dict]:
    """Points {minutes, <metric>} from JSON lines {train_minutes, test_<metric>, ...}."""
    points = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                points.append(
                    {"minutes": record["train_minutes"], metric: record[f"test_{metric}"]}
                )
            except KeyError as e:
                raise ValueError(f"{path}:{number}: a reference point needs {e}") from None
    return sorted(points, key=lambda p: p["minutes"])


FIT_POINTS = 3  # the recent slope: a straight line through the last three points


def extrapolate(points: list[dict], metric: str, target: float) -> dict:
    """How far the curve's last point is from `target` (a figure to get down to) and when it
    would reach it: `reached_minutes` (the first point at or below it), or `hours` from a
    least-squares line of the figure against ln(minutes) through the last FIT_POINTS
    points (None when those do not improve: no finite time)."""
    check(bool(points), "the curve has no point yet: train a segment first")
    last = points[-1]
    result = {
        "target": target,
        "last_minutes": last["minutes"],
        "last": last[metric],
        "gap": last[metric] - target,
    }
    reached = [p["minutes"] for p in points if p[metric] <= target]
    if reached:
        return {**result, "reached_minutes": reached[0]}
    fitted = [p for p in points if p["minutes"] > 0][-FIT_POINTS:]
    if len({p["minutes"] for p in fitted}) < 2:
        return {**result, "hours": None, "why": "two points at different minutes > 0 are needed"}
    slope, intercept = statistics.linear_regression(
        [math.log(p["minutes"]) for p in fitted], [p[metric] for p in fitted]
    )
    result.update(per_doubling=slope * math.log(2), fitted_minutes=[p["minutes"] for p in fitted])
    if slope >= 0:
        return {**result, "hours": None, "why": "the last points do not improve"}
    minutes = math.exp((target - intercept) / slope)
    return {**result, "hours": minutes / 60.0}


FLAT_HOURS = 100_000  # beyond this an estimate says only that the curve is flat


def describe(estimate: dict) -> str:
    """One line for a target's estimate."""
    head = (
        f"target {estimate['target']:g}: {estimate['last']:.2f} at "
        f"{estimate['last_minutes']:.0f} min ({estimate['gap']:+.2f})"
    )
    if "reached_minutes" in estimate:
        return f"{head}, reached at {estimate['reached_minutes']:.0f} min"
    if estimate["hours"] is None:
        return f"{head}, no finite estimate: {estimate['why']}"
    slope = f"{estimate['per_doubling']:+.3g} per doubling of time"
    if estimate["hours"] > FLAT_HOURS:
        return f"{head}, {slope}: flat, over {FLAT_HOURS:,} h at that slope"
    return f"{head}, {slope}, ~{estimate['hours']:.1f} h at that slope (a lower bound)"


def draw(curve, path, reference=None, reference_name="reference") -> bool:
    """Draws curve["points"] (and reference points) as a PNG; False without matplotlib."""
    if pyplot is None:
        return False
    metric = curve.get("metric", "nll_nats")
    figure, axes = pyplot.subplots(figsize=(5, 3.5))
    lines = [("gen_keras", curve["points"])]
    if reference:
        lines.append((reference_name, reference))
    for label, points in lines:
        axes.plot([p["minutes"] for p in points], [p[metric] for p in points], "o-", label=label)
    for estimate in curve.get("targets", []):
        axes.axhline(estimate["target"], linestyle="--", linewidth=0.8, color="gray")
        axes.annotate(
            f"target {estimate['target']:g}",
            (0, estimate["target"]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="gray",
        )
    if reference:
        axes.legend()
    axes.set_xlabel("training minutes (this CPU)")
    axes.set_ylabel(LABELS.get(metric, metric))
    axes.set_title(curve["name"])
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def overview(model_dirs, path) -> bool:
    """Draws the curves of several runs (their curve.json) in one PNG, one panel per figure
    (NLL nats, bits/dim, FID), one line per run labelled by its directory's name; False
    without matplotlib."""
    curves_by_metric: dict[str, list[tuple[str, dict]]] = {}
    for model_dir in model_dirs:
        curve = _load(os.path.join(model_dir, "curve.json"))
        check(bool(curve["points"]), f"{model_dir} has no curve points (no curve.json or empty)")
        label = os.path.basename(os.path.normpath(model_dir))  # runs' names tell them apart
        curves_by_metric.setdefault(curve["metric"], []).append((label, curve))
    if pyplot is None:
        return False
    figure, axes = pyplot.subplots(
        1, len(curves_by_metric), figsize=(4.5 * len(curves_by_metric), 3.5), squeeze=False
    )
    for ax, (metric, group) in zip(axes[0], sorted(curves_by_metric.items()), strict=True):
        for label, curve in group:
            points = curve["points"]
            ax.plot([p["minutes"] for p in points], [p[metric] for p in points], "o-", label=label)
        ax.set_xlabel("training minutes (this CPU)")
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def adopt_clock(model_dir: str, points: list[dict]) -> None:
    """A curve begun before the harness kept a training clock: its last point's minutes
    become the clock at its step, so that later points count from there. Refuses a run
    that trained past its last point without a clock (a segment killed before that
    existed), whose minutes cannot be known. A clock that knows the newest checkpoint is
    kept as it is (a segment killed after its last save: the point's own step may have
    rotated out of the clock with its checkpoint)."""
    if not points:
        return
    clock = runs.read_clock(model_dir)
    steps = checkpoints.indexed_steps(os.path.join(model_dir, "checkpoints"))
    last = points[-1]
    if last["step"] in clock or (steps and steps[-1] in clock):
        return
    check(
        steps and steps[-1] == last["step"],
        f"{model_dir} trained to step {steps[-1] if steps else None} after its curve's last "
        f"point (step {last['step']}) without a training clock: its minutes are unknown; "
        "extend a copy from a checkpoint at that step, or start a new --model_dir",
    )
    with open(os.path.join(model_dir, runs.TRAIN_CLOCK), "w") as f:
        json.dump({str(last["step"]): 60.0 * last["minutes"]}, f)


def extend(
    family: str,
    model_config,
    data: DataConfig,
    train_config: TrainConfig,
    segment_minutes: float,
    segments: int,
    name: str = "",
    reference=None,
    reference_name: str = "reference",
    targets: tuple[float, ...] = (),
    verbose: int = 0,
) -> dict:
    """Adds `segments` points to the curve in train_config.model_dir (resuming its run);
    returns the curve. Each segment trains `segment_minutes` more minutes, then records
    the run's final figures (floats) under the minutes trained so far. With `targets`,
    the curve states its distance and estimated hours to each (see `extrapolate`)."""
    metric = metric_for(family, data, model_config)
    model_dir = train_config.model_dir
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "curve.json")
    curve = _load(path)
    check(
        curve.get("metric", "nll_nats") == metric or not curve["points"],
        f"{path} draws {curve.get('metric', 'nll_nats')}, not {metric}: extend it with its "
        "own family and data, or give another --model_dir",
    )
    curve.update(
        name=name or family,
        family=family,
        metric=metric,
        config=dataclasses.asdict(model_config),
        batch_size=train_config.batch_size,
        ema_decay=train_config.ema_decay,
        lr_warmup_steps=train_config.lr_warmup_steps,
        lr_decay=train_config.lr_decay,
    )
    png = os.path.join(model_dir, "curve.png")

    def save():  # the targets' estimates from the points so far, then the JSON and picture
        if targets:
            curve["targets"] = [extrapolate(curve["points"], metric, t) for t in targets]
            for line in curve["targets"]:
                print(describe(line), flush=True)
        with open(path, "w") as f:
            json.dump(curve, f, indent=1)
        draw(curve, png, reference, reference_name)

    if segments == 0:  # redraw only (e.g. after the reference's points or targets arrived)
        save()
    segment = dataclasses.replace(train_config, max_train_minutes=segment_minutes)
    for _ in range(segments):
        adopt_clock(model_dir, curve["points"])
        start = time.monotonic()
        run = train.fit(family, model_config, data, segment, verbose=verbose)
        check(
            run.train_seconds is not None,
            f"{model_dir} resumed a checkpoint its training clock does not know: its minutes "
            "are unknown; start a new --model_dir",
        )
        figures = {k: v for k, v in run.final_metrics.items() if isinstance(v, float)}
        point = {
            "minutes": run.train_seconds / 60.0,
            "step": run.step,
            **figures,
            "segment_wall_minutes": (time.monotonic() - start) / 60,
        }
        curve["points"].append(point)
        save()
        print(json.dumps(point), flush=True)
    return curve


def configs(family: str):
    """(model, data, train) configs from the flags: the preset with the model fields given,
    trainers.<family>'s data and training defaults with the shared flags given."""
    module = models.get(family)
    fields = common.family_fields(module, MODULES)
    model_config = dataclasses.replace(preset(module, FLAGS.config, **fields), **fields)
    family_train, family_data = common.DEFAULTS[family]
    data = dataclasses.replace(family_data, **common.given(DataConfig))
    given = common.given(TrainConfig)
    if "max_train_minutes" in given:
        raise UsageError("--max_train_minutes does not apply: --segment_minutes is the clock")
    arch = variant(model_config)
    defaults = dict(
        epochs=SCHEDULE.epochs,
        export=SCHEDULE.export,
        jit_compile=SCHEDULE.jit_compile,
        checkpoint_every_steps=SCHEDULE.checkpoint_every_steps,
        model_dir=os.path.join(
            "runs", "_".join(x for x in ("curve", family, arch, FLAGS.config) if x)
        ),
    )
    if family == "gan" and "batch_size" not in given:  # as trainers.gan: n_critic x 64
        defaults["batch_size"] = module.default_batch(model_config)
    train_config = dataclasses.replace(family_train, **{**defaults, **given})
    return model_config, data, train_config


def variant(model_config) -> str:
    """What tells a family's curves apart in names: the architecture, or a GAN's loss."""
    return getattr(model_config, "arch", "") or getattr(model_config, "loss", "")


def parse_targets(values) -> list[float]:
    """--targets as numbers, or a one-line error."""
    try:
        return [float(v) for v in values]
    except ValueError:
        raise UsageError(
            f"--targets takes numbers, e.g. 81.30,79.20; got {','.join(values)}"
        ) from None


def main(argv):
    del argv
    if FLAGS.overview:
        check(bool(FLAGS.runs), "--overview draws the curves of --runs=DIR,DIR,...: give them")
        check(overview(FLAGS.runs, FLAGS.overview), "--overview needs matplotlib")
        print(f"wrote {FLAGS.overview}")
        return
    model_config, data, train_config = configs(FLAGS.family)
    metric = metric_for(FLAGS.family, data, model_config)
    reference = read_reference(FLAGS.reference, metric) if FLAGS.reference else None
    arch = variant(model_config)
    extend(
        FLAGS.family,
        model_config,
        data,
        train_config,
        FLAGS.segment_minutes,
        FLAGS.segments,
        name=f"{FLAGS.family} {arch} ({FLAGS.config}), {data.binarization}".replace("  ", " "),
        reference=reference,
        reference_name=FLAGS.reference_name,
        targets=tuple(parse_targets(FLAGS.targets)),
        verbose=common.verbosity(),
    )


if __name__ == "__main__":
    define_flags()
    common.run(main)
