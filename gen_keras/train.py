"""One training harness for every family: strategy, XLA, checkpoints, summaries, export.

`fit(family, model_config, data_config, train_config)` trains a model from
`gen_keras.models` with a custom loop (`strategy.run` over a compiled `train_step`), which
works the same under the default, mirrored, multi-worker and TPU strategies (Keras 3
`fit` does not run under MultiWorkerMirroredStrategy).

A run lives in `model_dir`: `config.json` (the run record), `checkpoints/`, TensorBoard
logs in `train/` and `eval/`, sample grids as PNG in `samples/`, and `metrics.json`. A run
restarted with the same command resumes from its last checkpoint, mid-epoch included, and
sees exactly the batches and seeds it would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf

from gen_keras import export as export_lib
from gen_keras import models, rng, summaries
from gen_keras.config import DataConfig, TrainConfig, UsageError, check, from_dict
from gen_keras.data import DataSpec, ImageData

RUN_RECORD = "config.json"
# Fields that define what a run learns; a restart with other values would corrupt it.
_IDENTITY = {"model": None, "data": ("dataset", "binarization", "train_split", "binarization_seed")}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last checkpoint is intact."""


@dataclasses.dataclass
class RunResult:
    model: keras.Model
    step: int
    eval_logs: dict
    final_metrics: dict
    export_path: str | None
    model_dir: str


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default | mirrored | multi_worker (reads TF_CONFIG) | tpu (TPUClusterResolver)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        check(
            "TF_CONFIG" in os.environ,
            "strategy=multi_worker needs TF_CONFIG (cluster and task) in the environment",
        )
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
        raise UsageError(f"strategy=tpu found no TPU ({str(e).splitlines()[0]})") from None
    return tf.distribute.TPUStrategy(resolver)


def use_xla(flag: str) -> bool:
    """on/off, or auto: XLA on GPU and TPU, off on CPU (measured slower there, see README)."""
    if flag != "auto":
        return flag == "on"
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


def _record(family, model_config, data_config, train_config, spec) -> dict:
    return {
        "family": family,
        "model": dataclasses.asdict(model_config),
        "data": dataclasses.asdict(data_config),
        "train": dataclasses.asdict(train_config),
        "spec": spec.to_json(),
    }


def _dummy_batch(spec: DataSpec, n: int = 2) -> dict:
    return {"image": tf.zeros([n, *spec.shape]), "label": tf.zeros([n], tf.int32)}


def _check_record(model_dir: str, record: dict) -> None:
    """Refuses to resume a run whose model or data identity differs from this one."""
    path = os.path.join(model_dir, RUN_RECORD)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    diffs = []
    if old.get("family") != record["family"]:
        diffs.append(f"family {old.get('family')!r} -> {record['family']!r}")
    for section, fields in _IDENTITY.items():
        a, b = old.get(section, {}), record[section]
        for key in fields or sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key} {a.get(key)!r} -> {b.get(key)!r}")
    if diffs:
        raise UsageError(
            f"model_dir={model_dir} holds a run with another configuration "
            f"({'; '.join(diffs)}); use a new --model_dir"
        )


def _write_json(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _flatten(record: dict) -> dict:
    return {
        f"{section}.{k}": v
        for section in ("model", "data", "train")
        for k, v in record[section].items()
    }


def _finite(logs: dict) -> str | None:
    """The first non-finite value's name, or None."""
    for name, value in logs.items():
        if not math.isfinite(float(value)):
            return name
    return None


class _Run:
    """A model, its data, strategy, checkpoint and writers, built from configs."""

    def __init__(self, family, model_config, data_config: DataConfig, train_config: TrainConfig):
        self.family = models.get(family)
        self.train_config = train_config
        self.strategy = make_strategy(train_config.strategy)
        self.chief = is_chief(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        check(
            train_config.batch_size % self.replicas == 0,
            f"batch_size={train_config.batch_size} must be divisible by the "
            f"{self.replicas} replicas of strategy={train_config.strategy}",
        )
        self.train_data = ImageData(data_config, data_config.train_split, training=True)
        self.eval_data = ImageData(data_config, data_config.eval_split, training=False)
        self.spec: DataSpec = self.train_data.spec
        self.record = _record(family, model_config, data_config, train_config, self.spec)
        self.model_dir = train_config.model_dir
        _check_record(self.model_dir, self.record)
        with self.strategy.scope():
            self.model = self.family.build(model_config, self.spec, train_config.learning_rate)
            self.model.build_for_training(_dummy_batch(self.spec))
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.checkpoint = tf.train.Checkpoint(
                model=self.model,
                step=self.step,
                **{
                    f"optimizer_{i}": opt
                    for i, (opt, _) in enumerate(self.model.optimizer_variables())
                },
            )
        directory = os.path.join(self.model_dir, "checkpoints")
        if not self.chief:  # every worker saves (a collective op); only the chief keeps it
            directory = os.path.join(
                self.model_dir, f".worker-{self.strategy.cluster_resolver.task_id}"
            )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            directory,
            max_to_keep=train_config.keep_checkpoints,
            step_counter=self.step,
        )

    @property
    def per_replica_batch(self) -> int:
        return self.train_config.batch_size // self.replicas

    def restore(self) -> int:
        """Restores the latest checkpoint, if any; returns the step reached."""
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(
                self.manager.latest_checkpoint
            ).assert_existing_objects_matched()
        return int(self.step.numpy())

    def distributed(self, data: ImageData, **kwargs):
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: data.dataset(
                ctx.get_per_replica_batch_size(self.train_config.batch_size),
                input_context=ctx,
                **kwargs,
            )
        )


def _step_function(run: _Run, method, jit: bool):
    """A tf.function that runs method (train_step/test_step) on one batch per replica."""
    step_fn = tf.function(method, jit_compile=jit)
    strategy, model = run.strategy, run.model

    @tf.function
    def step(iterator, seed):
        data = next(iterator)

        def replica(data):
            replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
            return step_fn(dict(data, seed=rng.fold_in(seed, replica_id)))

        strategy.run(replica, (data,))
        return {m.name: m.result() for m in model.metrics}

    return step


def evaluate(run: _Run, seed, jit: bool = False, steps: int | None = None) -> dict:
    """test_step over the eval split (or its first `steps` batches); returns mean metrics."""
    for m in run.model.metrics:
        m.reset_state()
    test = _step_function(run, run.model.test_step, jit)
    total = run.eval_data.steps_per_epoch(run.train_config.batch_size)
    total = min(total, steps) if steps else total
    iterator = iter(run.distributed(run.eval_data, steps=total))
    logs = {}
    for i in range(total):
        logs = test(iterator, rng.fold_in(seed, i))
    return {k: float(v) for k, v in logs.items()}


def fit(
    family: str, model_config, data_config: DataConfig, train_config: TrainConfig, verbose: int = 1
) -> RunResult:
    """Trains (or resumes) a run to train_config.epochs; evaluates; exports; returns it."""
    run = _Run(family, model_config, data_config, train_config)
    cfg, model = run.train_config, run.model
    jit = use_xla(cfg.jit_compile)
    if run.chief:
        os.makedirs(run.model_dir, exist_ok=True)
        _write_json(os.path.join(run.model_dir, RUN_RECORD), run.record)
    step = run.restore()
    spe = cfg.steps_per_epoch or run.train_data.steps_per_epoch(cfg.batch_size)
    total = cfg.epochs * spe
    base_seed = tf.constant([cfg.seed % (2**31), 1], tf.int32)
    eval_seed = tf.constant([cfg.seed % (2**31), 2], tf.int32)
    summary_seed = tf.constant([cfg.seed % (2**31), 3], tf.int32)
    logdir = run.model_dir if run.chief else os.path.join(run.model_dir, ".worker-logs")
    train_writer = tf.summary.create_file_writer(os.path.join(logdir, "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(logdir, "eval"))
    if step == 0:
        summaries.hparams(train_writer, {**_flatten(run.record), "xla": jit}, run.model_dir)
    summary_batch = next(iter(run.eval_data.dataset(cfg.num_summary_images)))
    train = _step_function(run, model.train_step, jit)
    eval_logs: dict = {}

    while step < total:
        epoch, offset = divmod(step, spe)
        for m in model.metrics:
            m.reset_state()
        iterator = iter(
            run.distributed(
                run.train_data, seed=cfg.seed, epoch=epoch, skip=offset, steps=spe - offset
            )
        )
        bar = keras.utils.Progbar(
            spe, verbose=verbose, stateful_metrics=[m.name for m in model.metrics]
        )
        if verbose:
            print(
                f"epoch {epoch + 1}/{cfg.epochs}" + (f" (resumed at step {step})" if offset else "")
            )
        start, logs = time.perf_counter(), {}
        for i in range(offset, spe):
            logs = train(iterator, rng.fold_in(base_seed, step))
            step += 1
            run.step.assign(step)
            bad = _finite(logs)
            if bad is not None:
                last = run.manager.latest_checkpoint or "none"
                raise TrainingError(
                    f"{bad} became {float(logs[bad])} at step {step}; stopped. "
                    f"The last good checkpoint is kept: {last}"
                )
            bar.update(i + 1, [(k, float(v)) for k, v in logs.items()])
            if step % cfg.log_every_steps == 0:
                summaries.scalars(train_writer, logs, step)
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                run.manager.save(checkpoint_number=step)
        seconds = time.perf_counter() - start
        images_per_sec = (spe - offset) * cfg.batch_size / max(seconds, 1e-9)
        summaries.scalars(train_writer, {**logs, "images_per_sec": images_per_sec}, step)
        eval_logs = evaluate(run, eval_seed, jit, cfg.eval_steps)
        with eval_writer.as_default(step=step):
            eval_logs.update(model.epoch_metrics(run.eval_data, eval_seed))
        summaries.scalars(eval_writer, eval_logs, step)
        _epoch_pictures(run, eval_writer, summary_batch, summary_seed, epoch + 1, step)
        run.manager.save(checkpoint_number=step)
        train_writer.flush()
        eval_writer.flush()
        if verbose:
            print(
                "  eval: "
                + ", ".join(f"{k}={v:.4f}" for k, v in eval_logs.items())
                + f"  ({images_per_sec:.0f} images/s)"
            )

    if not eval_logs:
        eval_logs = evaluate(run, eval_seed, jit, cfg.eval_steps)
    final = model.final_metrics(run.eval_data, eval_seed)
    summaries.scalars(eval_writer, final, step, prefix="final/")
    eval_writer.flush()
    export_path = None
    if run.chief:
        _write_json(
            os.path.join(run.model_dir, "metrics.json"),
            {"step": step, "eval": eval_logs, "final": final},
        )
        if cfg.export:
            export_path = export_lib.export(model, cfg.export_dir, run.record["family"])
    return RunResult(model, step, eval_logs, final, export_path, run.model_dir)


def _epoch_pictures(run, writer, batch, seed, epoch: int, step: int) -> None:
    pictures = run.model.image_summaries(batch, seed)
    grids = summaries.images(writer, pictures, step)
    if run.chief and "samples" in grids:
        path = os.path.join(run.model_dir, "samples", f"epoch_{epoch:04d}.png")
        summaries.write_png(path, grids["samples"])
        summaries.write_png(os.path.join(run.model_dir, "samples.png"), grids["samples"])


def restore_model(model_dir: str):
    """Rebuilds a run's model from its record and restores its latest checkpoint.

    Returns (model, step); needs no data, so a run can be exported anywhere.
    """
    path = os.path.join(model_dir, RUN_RECORD)
    check(os.path.exists(path), f"model_dir={model_dir} has no {RUN_RECORD}: not a gen_keras run")
    with open(path) as f:
        record = json.load(f)
    family = models.get(record["family"])
    spec = DataSpec.from_json(record["spec"])
    model = family.build(from_dict(family.Config, record["model"]), spec, 1e-3)
    model.build_for_training(_dummy_batch(spec))
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=model, step=step)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    check(latest is not None, f"model_dir={model_dir} has no checkpoint to export")
    checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    return model, int(step.numpy())
