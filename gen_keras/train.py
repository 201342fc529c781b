"""One training harness for every family: strategy, XLA, checkpoints, summaries, export.

`fit(family, model_config, data_config, train_config)` trains a model from
`gen_keras.models` with a custom loop (`strategy.run` over a compiled `train_step`), which
works the same under the default, mirrored, multi-worker and TPU strategies (Keras 3
`fit` does not run under MultiWorkerMirroredStrategy).

A run lives in `model_dir`: `config.json` (the run record), `checkpoints/`, TensorBoard
logs in `train/` and `eval/`, sample grids as PNG in `samples/`, `metrics.json` (with the
run's training seconds) and `train_clock.json` (the training seconds at each checkpoint). A run
restarted with the same command resumes from its last checkpoint, mid-epoch included, and
sees exactly the batches and seeds it would have seen; `train_config.seed` also seeds the
initial weights, so the same command and seed give the same run, bit for bit, on one machine.

Faults the harness survives:
- every usage error (flags, TF_CONFIG, data splits, a classifier path) is raised before
  anything is written to `model_dir`;
- a checkpoint is written only when every variable (model and optimizer slots) is finite;
- restore scans the `ckpt-<step>.index` files (not the `checkpoint` state file, which a crash
  or a user can leave stale or garbled), reads every tensor of the newest one (checksums and
  finiteness), and falls back to the newest intact checkpoint, saying so in one line; the
  damaged newer ones are moved to `checkpoints/damaged/`, so rotation never deletes an intact
  checkpoint in their favour. With checkpoints on disk and none intact it stops
  (TrainingError) rather than start again at step 0.
- resuming with other values of the fields that change what is learned
  (`config.LEARNING_FIELDS`) is refused unless `train_config.allow_config_change` names
  them; allowed changes are appended to the record's `history`.

A learning-rate schedule (`lr_warmup_steps`, `lr_decay`) is a function of the global step,
set before every step, so a resumed run follows it exactly; TensorBoard logs the rate.

With `train_config.ema_decay` > 0 (Polyak averaging, as in PixelCNN++), every optimizer keeps
an exponential moving average of the weights it trains (Keras `use_ema`, checkpointed with
its slots); evaluation and pictures run inside `averaged_weights`, and the model that `fit`
returns, scores and exports holds the averages (its last checkpoint holds both).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time

import keras
import tensorflow as tf
from absl import logging

from gen_keras import callbacks, evaluation, models, rng, runs, summaries, transfer
from gen_keras import export as export_lib
from gen_keras.averaging import averaged_weights, keep_averages, swap_averages
from gen_keras.checkpoints import (
    TrainingError,
    checkpoint_files,
    clean_temp,
    describe_damage,
    indexed_steps,
    move_aside,
    non_finite,
    restore_newest_intact,
    run_checkpoint,
    write_state,
)
from gen_keras.config import LEARNING_FIELDS, DataConfig, TrainConfig, UsageError, check
from gen_keras.data import DataSpec, ImageData
from gen_keras.layers import Conv2D, Conv2DTranspose, MaskedConv2D, in_precision
from gen_keras.models.base import dummy_batch
from gen_keras.runs import RUN_RECORD, TRAIN_CLOCK, read_clock

# Fields that define what a run learns; a restart with other values would corrupt it. Every
# model field; these data fields; the train fields in LEARNING_FIELDS (which
# allow_config_change may release). The other train fields (epochs, export, logging,
# checkpointing, time budget, eval_steps, jit_compile, strategy, precision, micro_batch,
# intra_op_threads) may change on any resume.
_IDENTITY = {
    "model": None,
    "data": ("dataset", "binarization", "train_split", "binarization_seed"),
    "train": (*LEARNING_FIELDS, "ema_decay"),
}


def _absent(section: str, family: str) -> dict:
    """{field: default, as recorded} that an older record's missing `section` fields read
    as: a record written before a train or model field existed ran with its default."""
    cls = {"train": TrainConfig, "model": models.get(family).Config}.get(section)
    fields = dataclasses.fields(cls) if cls else ()
    return json.loads(json.dumps({f.name: f.default for f in fields}))


class Preempted(RuntimeError):
    """SIGTERM arrived: a checkpoint of the current step was saved; rerun to resume."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a terminated job


class _SigtermWatch:
    """Turns SIGTERM into a flag read at step boundaries (main thread only).

    With several workers the flag is summed over workers after every step, so all of them
    save the same step and leave together; a signal to any one is a signal to all.
    """

    def __init__(self, run):
        self.run, self.flag, self.previous = run, False, None
        multi = run.strategy.extended._in_multi_worker_mode()
        self._agree = (
            tf.function(
                lambda flag: run.strategy.reduce(
                    tf.distribute.ReduceOp.SUM,
                    run.strategy.run(lambda: tf.identity(flag)),
                    axis=None,
                )
            )
            if multi
            else None
        )

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.flag = True

    def requested(self) -> bool:
        if self._agree is None:
            return self.flag
        return bool(self._agree(tf.constant(int(self.flag))) > 0)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


@dataclasses.dataclass
class RunResult:
    model: keras.Model
    step: int
    eval_logs: dict
    final_metrics: dict
    export_path: str | None
    model_dir: str
    # Training seconds of the whole run so far, resumes included (evaluation, checkpoints
    # and each invocation's first step excluded); None if an earlier invocation of the run
    # kept no clock (a run started before the clock existed).
    train_seconds: float | None = None


def check_tf_config(strategy: str) -> None:
    """TF_CONFIG, when set, must be a JSON object; multi_worker needs its cluster and task.

    TensorFlow reads it lazily and fails deep inside (or, with one worker, ignores it): a
    garbled value is a usage error, whatever the strategy.
    """
    text = os.environ.get("TF_CONFIG")
    if text is None or not text.strip():
        check(
            strategy != "multi_worker",
            "strategy=multi_worker needs TF_CONFIG (cluster and task) in the environment",
        )
        return
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"TF_CONFIG={text[:80]!r} is not JSON ({e}); fix or unset it") from None
    check(
        isinstance(value, dict),
        f"TF_CONFIG={text[:80]!r} is not a JSON object with cluster and task; fix or unset it",
    )
    if strategy == "multi_worker":
        check(
            isinstance(value.get("cluster"), dict) and isinstance(value.get("task"), dict),
            f"TF_CONFIG={text[:80]!r} needs 'cluster' and 'task' objects for strategy=multi_worker",
        )


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default | mirrored | multi_worker (reads TF_CONFIG) | tpu (TPUClusterResolver)."""
    check_tf_config(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        _configure_coordination()
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
        raise UsageError(f"strategy=tpu found no TPU ({str(e).splitlines()[0]})") from None
    return tf.distribute.TPUStrategy(resolver)


def _configure_coordination(shutdown_timeout_s: int = 120) -> None:
    """MultiWorkerMirroredStrategy's coordination service, with a shutdown barrier.

    Without it the leader (worker 0) exits as soon as it is done and the other workers
    wait out a heartbeat timeout at exit (tensorflow#58434); with it every worker leaves
    together. The rest is what the strategy would configure itself.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
        for job in ("chief", "worker")
        if job in cluster.jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=jobs,
        shutdown_barrier_timeout_in_ms=shutdown_timeout_s * 1000,
    )


def use_xla(flag: str, strategy_name: str = "default") -> bool:
    """on/off, or auto: XLA on GPU and TPU, off on CPU (measured slower there, see README).

    Under a distribution strategy the optimizer's cross-replica sum cannot sit inside a
    nested compiled function, so XLA is off there (TPUStrategy compiles everything anyway).
    """
    if strategy_name != "default":
        check(
            flag != "on",
            f"jit_compile=on does not work with strategy={strategy_name} (the gradient "
            "all-reduce cannot run inside a compiled step); use jit_compile=auto or off",
        )
        return False
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


def _read_record(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, RUN_RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"{path} is not a readable run record ({e}); use a new --model_dir"
        ) from None


def _check_record(old: dict | None, record: dict, model_dir: str, allowed=()) -> dict:
    """Refuses to resume a run whose model, data or learning fields differ from this one.

    Returns {"train.<field>": [old, new]} of the changes that `allowed` (field names of
    LEARNING_FIELDS) lets through; any other difference raises UsageError.
    """
    if old is None:
        return {}
    diffs, changes = [], {}
    if old.get("family") != record["family"]:
        diffs.append(f"family {old.get('family')!r} -> {record['family']!r}")
    for section, fields in _IDENTITY.items():
        a, b = {**_absent(section, record["family"]), **old.get(section, {})}, record[section]
        for key in fields or sorted(set(a) | set(b)):
            if a.get(key) == b.get(key):
                continue
            if section == "train" and key in allowed:
                changes[f"{section}.{key}"] = [a.get(key), b.get(key)]
            else:
                diffs.append(f"{section}.{key} {a.get(key)!r} -> {b.get(key)!r}")
    if diffs:
        learning = [d.split()[0][len("train.") :] for d in diffs if d.startswith("train.")]
        hint = (
            f", or --allow_config_change={','.join(learning)} if the change is meant"
            if learning and len(learning) == len(diffs)
            else ""
        )
        raise UsageError(
            f"model_dir={model_dir} holds a run with another configuration "
            f"({'; '.join(diffs)}); use a new --model_dir{hint}"
        )
    return changes


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

    def __init__(
        self,
        family,
        model_config,
        data_config: DataConfig,
        train_config: TrainConfig,
        train_data: ImageData | None = None,
        eval_data: ImageData | None = None,
    ):
        self.family = models.get(family)
        self.train_config = train_config
        # Whether the learning rate follows a schedule (decided once; `schedule` sets it).
        self.scheduled = bool(train_config.lr_warmup_steps) or train_config.lr_decay != 1.0
        set_intra_op_threads(train_config.intra_op_threads)  # before any op of this run
        self.strategy = make_strategy(train_config.strategy)
        self.chief = is_chief(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        check(
            train_config.batch_size % self.replicas == 0,
            f"batch_size={train_config.batch_size} must be divisible by the "
            f"{self.replicas} replicas of strategy={train_config.strategy}",
        )
        if hasattr(self.family, "check_batch"):  # a GAN splits it into critic minibatches
            self.family.check_batch(model_config, train_config.batch_size, self.replicas)
        chunk = train_config.micro_batch
        check_micro_batch(chunk, train_config.batch_size // self.replicas)
        self.train_data = train_data or ImageData(data_config, data_config.train_split, True)
        self.eval_data = eval_data or ImageData(data_config, data_config.eval_split, False)
        self.spec: DataSpec = self.train_data.spec
        self.record = _record(family, model_config, data_config, train_config, self.spec)
        self.model_dir = train_config.model_dir
        self.old_record = _read_record(self.model_dir)
        self.changes = _check_record(
            self.old_record, self.record, self.model_dir, train_config.allow_config_change
        )
        keras.utils.set_random_seed(train_config.seed)  # the initial weights, reproducibly
        with self.strategy.scope():
            self.model = runs.build(family, model_config, self.spec, train_config.learning_rate)
            keep_averages(self.model, train_config.ema_decay)  # before the slots are built
            self.model.build_for_training(dummy_batch(self.spec))
            check(
                train_config.precision == "float32"
                or any(isinstance(x, PRECISION_LAYERS) for x in self.model._flatten_layers()),
                f"precision={train_config.precision!r} casts the convolutions of pixelcnn, "
                f"pixelrnn and vae arch='resnet'; this {family} has none",
            )
            check(
                not chunk or hasattr(self.model, "micro_batch"),
                f"micro_batch={chunk} applies to pixelcnn, pixelrnn and vae; {family} trains "
                "whole batches",
            )
            if chunk:
                self.model.micro_batch = chunk
            # The configured rate of each optimizer (a GAN's two may differ): the schedule's
            # 100%. A checkpoint holds the last scheduled rate, not this one.
            self.base_rates = [
                float(tf.convert_to_tensor(opt.learning_rate))
                for opt, _ in self.model.optimizer_variables()
            ]
            transfer.warm_start(self.model)  # a checkpoint, if any, is restored over it
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            # The run's clock {step: training seconds} and its value at the restored step
            # (None: a checkpoint the clock never saw); both set by restore.
            self.clock: dict[int, float] = {}
            self.trained_before: float | None = 0.0
            optimizers = [opt for opt, _ in self.model.optimizer_variables()]
            self.checkpoint = run_checkpoint(self.model, self.step, optimizers)
        self._test_functions: dict[bool, tf.types.experimental.PolymorphicFunction] = {}
        self.variables = [self.step, *self.model.variables]
        self.variables += [v for opt in optimizers for v in opt.variables]
        self.checkpoint_dir = os.path.join(self.model_dir, "checkpoints")
        self.save_dir, self.keep = self.checkpoint_dir, train_config.keep_checkpoints
        if not self.chief:
            # Saving is a collective op, so every worker saves; the others keep only their
            # latest checkpoint, in a hidden folder, and all restore from the chief's.
            task_id = self.strategy.cluster_resolver.task_id
            self.save_dir, self.keep = os.path.join(self.model_dir, f".worker-{task_id}"), 1

    def test_function(self, jit: bool):
        """The evaluation step, traced once per run (and XLA flag): evaluation under averaged
        weights swaps their values in place, so one trace serves every epoch's evaluation."""
        if jit not in self._test_functions:
            self._test_functions[jit] = _step_function(self, self.model.test_step, jit)
        return self._test_functions[jit]

    def schedule(self, step: int) -> dict:
        """Sets every optimizer's learning rate for step `step` (0-based) of the schedule;
        returns {"learning_rate": the first optimizer's}, or {} without a schedule."""
        cfg = self.train_config
        if not self.scheduled:
            return {}
        factor = rate_factor(step, cfg.lr_warmup_steps, cfg.lr_decay)
        for (opt, _), base in zip(self.model.optimizer_variables(), self.base_rates, strict=True):
            opt.learning_rate = base * factor
        return {"learning_rate": self.base_rates[0] * factor}

    def write_record(self, step: int) -> None:
        """Writes config.json: this run's configuration, and the history of allowed changes."""
        history = list((self.old_record or {}).get("history", []))
        if self.changes:
            history.append({"step": step, "changes": self.changes})
        _write_json(os.path.join(self.model_dir, RUN_RECORD), {**self.record, "history": history})

    def restore(self) -> int:
        """Restores the chief's newest intact checkpoint, if any; returns the step reached.

        Damaged newer checkpoints are named in one warning and (by the chief) moved to
        checkpoints/damaged/, so that saving and rotation never count them; leftovers of
        killed saves are removed and the `checkpoint` state file is rewritten from the files.
        """
        step, damaged = restore_newest_intact(self.checkpoint, self.checkpoint_dir)
        if "train.learning_rate" in self.changes:  # the checkpoint's rate must not win
            for (opt, _), rate in zip(
                self.model.optimizer_variables(), self.base_rates, strict=True
            ):
                opt.learning_rate = rate
        moved = ""
        if self.chief and damaged:
            moved = f"; moved their files to {move_aside(self.checkpoint_dir, damaged)}"
        clean_temp(self.save_dir)  # each worker tidies the directory it saves to
        write_state(self.save_dir)
        if damaged:
            resumed = f"resuming from ckpt-{step}" if step is not None else "starting at step 0"
            logging.warning(
                "damaged checkpoint %s in %s: %s instead%s",
                describe_damage(damaged),
                self.checkpoint_dir,
                resumed,
                moved,
            )
        step = int(self.step.numpy())
        self.clock = read_clock(self.model_dir) if step else {}
        self.trained_before = self.clock.get(step, 0.0 if step == 0 else None)
        return step

    def train_seconds(self, spent: float) -> float | None:
        """The run's training seconds: those before this invocation plus `spent` in it."""
        return None if self.trained_before is None else self.trained_before + spent

    def save(self, step: int, spent: float = 0.0) -> None:
        """Writes ckpt-<step> if every variable (optimizer slots too) is finite, then keeps
        the newest keep_checkpoints; a non-finite variable raises TrainingError instead.
        The chief also records the run's training seconds at `step` (`spent`: this
        invocation's) in the clock file, for the checkpoints on disk."""
        bad = non_finite(self.variables)
        if bad is not None:
            raise TrainingError(
                f"variable {bad} is not finite at step {step}; stopped without saving it. "
                f"The last good checkpoint is kept: {self.latest_checkpoint or 'none'}"
            )
        # The rotation, decided once: the clock names no checkpoint it deletes.
        older = [n for n in indexed_steps(self.save_dir) if n < step]
        cut = max(0, len(older) - (self.keep - 1))
        deleted, kept = older[:cut], set(older[cut:])
        seconds = self.train_seconds(spent)
        if self.chief and seconds is not None:  # first: a save killed half-way has its time
            self.clock = {n: t for n, t in self.clock.items() if n in kept}
            self.clock[step] = seconds
            _write_json(
                os.path.join(self.model_dir, TRAIN_CLOCK),
                {str(n): t for n, t in sorted(self.clock.items())},
            )
        self.checkpoint.write(os.path.join(self.save_dir, f"ckpt-{step}"))
        files = checkpoint_files(self.save_dir)
        for n in deleted:
            for path in files[n]:
                os.remove(path)
        write_state(self.save_dir)

    def barrier(self) -> None:
        """Blocks until every worker gets here (a no-op with one worker)."""
        if self.strategy.extended._in_multi_worker_mode():
            tf.function(
                lambda: self.strategy.reduce(
                    "SUM", self.strategy.run(lambda: tf.constant(1.0)), axis=None
                )
            )()

    @property
    def latest_checkpoint(self) -> str | None:
        """The chief's newest checkpoint on disk (every one written is finite)."""
        steps = indexed_steps(self.checkpoint_dir)
        return os.path.join(self.checkpoint_dir, f"ckpt-{steps[-1]}") if steps else None

    def writer(self, name: str):
        """A TensorBoard writer on the chief; other workers write nothing."""
        if not self.chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(os.path.join(self.model_dir, name))

    def distributed(self, data: ImageData, **kwargs):
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: data.dataset(self.train_config.batch_size, input_context=ctx, **kwargs)
        )


def rate_factor(step: int, warmup_steps: int, decay: float) -> float:
    """The schedule's multiple of the configured learning rate at (0-based) step `step`:
    linear warm-up to 1 at step warmup_steps - 1, then `decay` per step."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warm * decay ** max(0, step - max(warmup_steps - 1, 0))


def _step_function(run: _Run, method, jit: bool):
    """A tf.function that runs method (train_step/test_step) on one batch per replica."""
    step_fn = tf.function(method, jit_compile=True) if jit else method
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
    test = run.test_function(jit)
    total = run.eval_data.steps_per_epoch(run.train_config.batch_size)
    total = min(total, steps) if steps else total
    iterator = iter(run.distributed(run.eval_data, steps=total))
    logs = {}
    for i in range(total):
        logs = test(iterator, rng.fold_in(seed, i))
    return {k: float(v) for k, v in logs.items()}


def check_micro_batch(chunk: int, per_replica_batch: int) -> None:
    """One line unless `chunk` (TrainConfig.micro_batch) is 0 or divides the batch."""
    check(
        chunk >= 0 and (not chunk or per_replica_batch % chunk == 0),
        f"micro_batch={chunk} must be >= 0 and divide each replica's batch "
        f"({per_replica_batch} images)",
    )


# Layers that follow TrainConfig.precision (gen_keras.layers.precision).
PRECISION_LAYERS = (MaskedConv2D, Conv2D, Conv2DTranspose)


def set_intra_op_threads(threads: int) -> None:
    """Sets TensorFlow's intra-op thread count (0: leave the default); one line if the runtime
    already started with another."""
    check(threads >= 0, f"intra_op_threads={threads} must be >= 0 (0: TensorFlow's default)")
    now = tf.config.threading.get_intra_op_parallelism_threads()
    if not threads or threads == now or os.environ.get("TF_NUM_INTRAOP_THREADS") == str(threads):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        raise UsageError(
            f"intra_op_threads={threads}: TensorFlow already runs with "
            f"{now or 'its default'}; set it before the first op (trainers and benchmarks do) "
            f"or start the process with TF_NUM_INTRAOP_THREADS={threads}"
        ) from None


def fit(
    family: str,
    model_config,
    data_config: DataConfig,
    train_config: TrainConfig,
    verbose: int = 1,
    train_data: ImageData | None = None,
    eval_data: ImageData | None = None,
) -> RunResult:
    """Trains (or resumes) a run to train_config.epochs; evaluates; exports; returns it.

    train_data/eval_data replace the splits named in data_config (e.g. TFRecords).
    Raises TrainingError on a non-finite loss or variable, or when checkpoints are on disk
    but none is intact; Preempted on SIGTERM (after saving). Usage errors (UsageError) all
    come before anything is written to model_dir.
    """
    run = _Run(family, model_config, data_config, train_config, train_data, eval_data)
    cfg, model = run.train_config, run.model
    jit = use_xla(cfg.jit_compile, cfg.strategy)
    quality = None
    if hasattr(model.config, "classifier"):  # samplers scored under a classifier
        quality = callbacks.SampleQuality(
            model.config.classifier,
            run.eval_data,
            num_samples=model.config.fid_samples,
            seed=(cfg.seed % (2**31), 2),
        )
        quality.load()  # a bad classifier path is a usage error now, before any write
    # Everything above only reads; from here on the run writes to model_dir.
    step = run.restore()
    if run.chief:
        os.makedirs(run.model_dir, exist_ok=True)
        run.write_record(step)
    loop = _Loop(run, jit, verbose if run.chief else 0, quality)
    if step == 0:
        summaries.hparams(loop.train_writer, {**_flatten(run.record), "xla": jit}, run.model_dir)
    eval_logs: dict = {}
    with _SigtermWatch(run) as sigterm:
        while step < loop.total and not loop.out_of_time():
            step, eval_logs = loop.epoch(step, sigterm)
    swap_averages(model)  # from here on the model holds the averaged weights, if any
    if not eval_logs:
        eval_logs = evaluate(run, loop.eval_seed, jit, cfg.eval_steps)
    final = evaluation.score_split(model, run.eval_data, loop.eval_seed)
    if loop.quality is not None:  # {} without a classifier
        final.update(loop.quality.evaluate(model.config.final_samples))
    summaries.scalars(loop.eval_writer, final, step, prefix="final/")
    loop.eval_writer.flush()
    export_path = None
    seconds = run.train_seconds(loop.spent)
    if run.chief:
        _write_json(
            os.path.join(run.model_dir, "metrics.json"),
            {"step": step, "eval": eval_logs, "final": final, "train_seconds": seconds},
        )
        if cfg.export:
            training = {
                "model_dir": os.path.abspath(run.model_dir),
                "step": step,
                "train_seconds": seconds,
            }
            export_path = export_lib.export(
                model, cfg.export_dir, run.record["family"], training=training
            )
    run.barrier()  # workers leave together: an early exit looks like a crash to the others
    return RunResult(model, step, eval_logs, final, export_path, run.model_dir, seconds)


class _Loop:
    """The per-epoch work of fit: steps, checks, summaries, evaluation, checkpoints."""

    def __init__(self, run: _Run, jit: bool, verbose: int, quality=None):
        cfg = run.train_config
        self.run, self.cfg, self.jit, self.verbose = run, cfg, jit, verbose
        self.steps_per_epoch = cfg.steps_per_epoch or run.train_data.steps_per_epoch(cfg.batch_size)
        self.total = cfg.epochs * self.steps_per_epoch
        seed = cfg.seed % (2**31)
        self.train_seed, self.eval_seed = (tf.constant([seed, k], tf.int32) for k in (1, 2))
        self.train_writer, self.eval_writer = run.writer("train"), run.writer("eval")
        self.callbacks = [
            callbacks.Pictures(
                data=run.eval_data,
                num_images=cfg.num_summary_images,
                seed=(seed, 3),
                png_dir=run.model_dir if run.chief else None,
                writer=self.eval_writer,
            )
        ]
        self.quality = quality
        if quality is not None:
            quality.set_writer(self.eval_writer)
            self.callbacks.insert(0, quality)
        for callback in self.callbacks:
            callback.set_model(run.model)
        # The training step's convolutions in cfg.precision; evaluation stays float32.
        self.train = _step_function(run, in_precision(run.model.train_step, cfg.precision), jit)
        self.budget = 60 * cfg.max_train_minutes if cfg.max_train_minutes else None
        # Training seconds of this invocation: the time between steps, from the end of the
        # first (data caching and tracing are free), without evaluation and checkpoints.
        self.spent, self.clock = 0.0, None

    def tick(self) -> float:
        """Counts the time since the last tick as training (the first tick starts the clock);
        returns it (0 for the first)."""
        now, counted = time.monotonic(), 0.0
        if self.clock is not None:
            counted = now - self.clock
            self.spent += counted
        self.clock = now
        return counted

    def pause(self) -> None:
        """Leaves the time since the last tick uncounted (evaluation, a checkpoint)."""
        if self.clock is not None:
            self.clock = time.monotonic()

    def out_of_time(self) -> bool:
        """True once max_train_minutes of training in this invocation are spent."""
        return self.budget is not None and self.spent >= self.budget

    def save(self, step: int) -> None:
        self.run.save(step, self.spent)
        self.pause()

    def epoch(self, step: int, sigterm: _SigtermWatch) -> tuple[int, dict]:
        """Trains from `step` to the end of its epoch; returns (step, eval logs)."""
        run, cfg, model, spe = self.run, self.cfg, self.run.model, self.steps_per_epoch
        epoch, offset = divmod(step, spe)
        for m in model.metrics:
            m.reset_state()
        iterator = iter(
            run.distributed(
                run.train_data, seed=cfg.seed, epoch=epoch, skip=offset, steps=spe - offset
            )
        )
        bar = keras.utils.Progbar(
            spe, verbose=self.verbose, stateful_metrics=[m.name for m in model.metrics]
        )
        if self.verbose:
            resumed = f" (resumed at step {step})" if offset else ""
            print(f"epoch {epoch + 1}/{cfg.epochs}{resumed}", flush=True)
        start, logs, slowest = time.perf_counter(), {}, 0.0
        for i in range(offset, spe):
            if self.out_of_time():
                spe = i  # the epoch ends here: evaluate and checkpoint what was trained
                break
            rate = run.schedule(step)
            logs = self.train(iterator, rng.fold_in(self.train_seed, step))
            slowest = max(slowest, self.tick())
            step += 1
            run.step.assign(step)
            bad = _finite(logs)
            if bad is not None:
                raise TrainingError(
                    f"{bad} became {float(logs[bad])} at step {step}; stopped. "
                    f"The last good checkpoint is kept: {run.latest_checkpoint or 'none'}"
                )
            bar.update(i + 1, [(k, float(v)) for k, v in logs.items()])
            if step % cfg.log_every_steps == 0:
                summaries.scalars(self.train_writer, {**logs, **rate}, step)
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                self.save(step)
            if sigterm.requested():
                self.save(step)
                self.train_writer.flush()
                raise Preempted(
                    f"preempted by SIGTERM at step {step}; saved "
                    f"{run.latest_checkpoint}; rerun the same command to resume"
                )
        images_per_sec = (spe - offset) * cfg.batch_size / max(time.perf_counter() - start, 1e-9)
        # The epoch's input pipeline goes now, off the clock: its teardown (tf.data's threads)
        # would otherwise run when this frame returns, after the checkpoint restarted the clock.
        del iterator
        # The longest stretch the clock counted as one step (the epoch's first holds its data
        # iterator's start): a stall in the input pipeline or the machine shows here.
        timing = {"images_per_sec": images_per_sec, "slowest_step_seconds": slowest}
        summaries.scalars(self.train_writer, {**logs, **timing}, step)
        with averaged_weights(model):
            eval_logs = evaluate(run, self.eval_seed, self.jit, cfg.eval_steps)
            logs = dict(eval_logs, step=step)
            for callback in self.callbacks:  # sample quality adds its figures to the logs
                callback.on_epoch_end(epoch, logs)
        eval_logs = {k: v for k, v in logs.items() if k != "step"}
        summaries.scalars(self.eval_writer, eval_logs, step)
        # The writers flush before the save pauses the clock: none of the epoch's closing
        # bookkeeping (evaluation, summaries, flushes, checkpoint) counts as training.
        self.train_writer.flush()
        self.eval_writer.flush()
        self.save(step)
        if self.verbose:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in eval_logs.items())
            print(f"  eval: {shown}  ({images_per_sec:.0f} images/s)", flush=True)
        return step, eval_logs
