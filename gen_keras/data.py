"""TFDS image datasets as seeded, cached tf.data pipelines in a model's data mode.

Every pipeline yields dicts {"image": float32 [batch, height, width, channels] in model
space, "label": int32 [batch]}. Model space per mode (see `config.DATA_MODES`):
binary modes {0., 1.}; `uint8` the integers 0..255 as float32; `float` [0, 1];
`float_symmetric` [-1, 1]. Data space, used where images cross the serving boundary,
is uint8: {0, 1} for binary modes and 0..255 for the rest.

Offline use: a dataset prepared under `data_dir`, `TFDS_DATA_DIR` or `../shared/
tensorflow_datasets` is read without touching the network; `manual_dir` builds
MNIST-format datasets from the four IDX files; anything else is downloaded by TFDS, or,
with no network, reported as a `UsageError` naming the directories searched.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import os
import pathlib
import re
import socket

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gen_keras.config import DataConfig, UsageError

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA_DIRS = (
    _REPO_ROOT.parent / "shared" / "tensorflow_datasets",
    pathlib.Path.cwd().parent / "shared" / "tensorflow_datasets",
)
_SHUFFLE_BUFFER = 60_000  # MNIST-sized datasets shuffle fully; larger ones approximately
# Fixed input parallelism instead of tf.data's autotuning: its thread sleeps in periods that
# double up to 60 s, and destroying an iterator waits out the current one. Measured on the
# Row LSTM (benchmarks/results.md): 16-18 s after most 25 s evaluations, and 21 s counted as
# training at an epoch's end; with autotuning off, teardown takes milliseconds.
_PARALLEL_CALLS = max(2, min(8, os.cpu_count() or 2))
_PREFETCH_BATCHES = 2


def _fixed_parallelism(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(_PREFETCH_BATCHES).with_options(options)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its data: image shape, data mode, number of classes."""

    shape: tuple[int, int, int]
    mode: str
    num_classes: int

    @property
    def binary(self) -> bool:
        return self.mode.startswith("binary")

    @property
    def max_value(self) -> int:
        """Largest pixel value in data space (uint8 at the serving boundary)."""
        return 1 if self.binary else 255

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.shape))

    def to_model(self, images: tf.Tensor) -> tf.Tensor:
        """uint8 data-space images [..., H, W, C] -> float32 model space."""
        x = tf.cast(images, tf.float32)
        if self.mode == "float":
            return x / 255.0
        if self.mode == "float_symmetric":
            return x / 127.5 - 1.0
        return x

    def to_data(self, x: tf.Tensor) -> tf.Tensor:
        """float32 model-space images -> uint8 data space (rounded, clipped)."""
        if self.mode == "float":
            x = x * 255.0
        elif self.mode == "float_symmetric":
            x = (x + 1.0) * 127.5
        return tf.cast(tf.clip_by_value(tf.round(x), 0.0, float(self.max_value)), tf.uint8)

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "mode": self.mode, "num_classes": self.num_classes}

    @classmethod
    def from_json(cls, d: dict) -> DataSpec:
        return cls(tuple(d["shape"]), d["mode"], int(d["num_classes"]))


def content_keys(images) -> tf.Tensor:
    """int32 [N] in 0..2**31-1: a key per image from its pixels alone.

    images: uint8 [N, H, W, C]. The key is 31 bits of the FarmHash64 fingerprint of the
    image's bytes (`tf.fingerprint`, stable across platforms and releases), so it does not
    depend on the image's position, split, batch, worker or the process scoring it.
    """
    images = tf.convert_to_tensor(images, tf.uint8)
    fingerprint = tf.fingerprint(tf.reshape(images, [tf.shape(images)[0], -1]))  # uint8 [N, 8]
    return tf.bitwise.bitwise_and(tf.bitcast(fingerprint[:, :4], tf.int32), 0x7FFFFFFF)


def binarization_uniform(image, seed: int) -> tf.Tensor:
    """float32 [H, W, C] uniforms of one uint8 image's static Bernoulli draw.

    The one binarization of the library: the draw of an image is keyed by its content,
    stateless seed [seed, content_keys(image)], so training, evaluation, the pipeline's
    Evaluator, Beam scoring and served images all binarize an image the same way.
    `pixels_to_model(image, mode, uniform)` turns it into {0, 1}.
    """
    image = tf.convert_to_tensor(image, tf.uint8)
    key = content_keys(image[None])[0]
    return tf.random.stateless_uniform(tf.shape(image), tf.stack([tf.constant(seed), key]))


def binarize(images, seed: int = DataConfig.binarization_seed) -> tf.Tensor:
    """uint8 images [N, H, W, C] (0..255) -> uint8 {0, 1}: each pixel ~ Bernoulli(pixel/255),
    drawn by `binarization_uniform` (content-keyed, the same draw as the training data)."""
    images = tf.convert_to_tensor(images, tf.uint8)
    uniform = tf.map_fn(
        lambda image: binarization_uniform(image, seed), images, fn_output_signature=tf.float32
    )
    return tf.cast(pixels_to_model(images, "binary_static", uniform), tf.uint8)


def pixels_to_model(pixels: tf.Tensor, mode: str, uniform: tf.Tensor | None = None) -> tf.Tensor:
    """Raw pixels (uint8 0..255) -> float32 model space; binary draws compare `uniform`."""
    p = tf.cast(pixels, tf.float32)
    if mode in ("binary_static", "binary_dynamic"):
        return tf.cast(uniform < p / 255.0, tf.float32)
    if mode == "binary_threshold":
        return tf.cast(p >= 128.0, tf.float32)
    if mode == "uint8":
        return p
    if mode == "float":
        return p / 255.0
    return p / 127.5 - 1.0  # float_symmetric


def network_available(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """True if `host` resolves within `timeout` seconds (DNS alone; TFDS retries for minutes)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable now"
        return False
    finally:
        pool.shutdown(wait=False)


def candidate_data_dirs(data_dir: str | None) -> list[str]:
    """Directories searched for a prepared dataset, in order."""
    if data_dir:
        return [data_dir]
    dirs = [os.environ["TFDS_DATA_DIR"]] if os.environ.get("TFDS_DATA_DIR") else []
    dirs += [str(d) for d in SHARED_DATA_DIRS if d.is_dir()]
    dirs.append(os.path.expanduser("~/tensorflow_datasets"))
    return list(dict.fromkeys(dirs))


def _read_idx(path: pathlib.Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{path} is not an IDX file of unsigned bytes (MNIST format)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UsageError(f"{path} holds {data.size} bytes, its header says {tuple(dims)}")
    return data.reshape(dims)


def _find_idx(manual_dir: str, stem: str) -> pathlib.Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        path = pathlib.Path(manual_dir) / name
        if path.is_file():
            return path
    raise UsageError(f"manual_dir={manual_dir!r} has no {stem} or {stem}.gz (the MNIST IDX files)")


def _load_manual(config: DataConfig, split: str):
    match = re.fullmatch(r"(train|test)(?:\[(\d*):(\d*)\])?", split)
    if not match:
        raise UsageError(
            f"split={split!r}: with manual_dir use train or test, optionally "
            "sliced like train[:1000]"
        )
    base, lo, hi = match.groups()
    images = _read_idx(_find_idx(config.manual_dir, _IDX_FILES[base][0]))
    labels = _read_idx(_find_idx(config.manual_dir, _IDX_FILES[base][1]))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise UsageError(f"IDX images {images.shape} and labels {labels.shape} do not match")
    sl = slice(int(lo) if lo else None, int(hi) if hi else None)
    images, labels = images[sl][..., None], labels[sl].astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    return ds, len(images), tuple(images.shape[1:]), int(labels.max()) + 1 if len(labels) else 10


def _prepared_builder(name: str, data_dir: str | None):
    for d in candidate_data_dirs(data_dir):
        builder = tfds.builder(name, data_dir=d)
        if builder.is_prepared():
            return builder
    return None


def builder_for(config: DataConfig):
    """The TFDS builder of config.dataset, prepared locally or downloaded; else UsageError."""
    try:
        builder = _prepared_builder(config.dataset, config.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UsageError(
            f"dataset={config.dataset!r} is not a TFDS dataset name (see tfds.list_builders())"
        ) from None
    if builder is None:
        searched = ", ".join(candidate_data_dirs(config.data_dir))
        fix = (
            "prepare it there, point --data_dir/TFDS_DATA_DIR at a copy, or give "
            "--manual_dir with the IDX files"
        )
        if not config.download:
            raise UsageError(
                f"dataset {config.dataset!r} is not prepared in {searched} and "
                f"downloads are off; {fix}"
            )
        if not network_available():
            raise UsageError(
                f"dataset {config.dataset!r} is not prepared in {searched} and "
                f"there is no network to download it; {fix}"
            )
        builder = tfds.builder(config.dataset, data_dir=config.data_dir)
        try:
            builder.download_and_prepare()
        except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; keep one line
            raise UsageError(
                f"could not download dataset {config.dataset!r} into "
                f"{builder.data_dir}: {str(e).splitlines()[0][:200]}"
            ) from None
    return builder


# TFDS datasets whose pixels are already {0, 1} (the fixed binarization of Larochelle &
# Murray 2011 that the published static-MNIST numbers use): scaled to {0, 255}, so every
# binary mode keeps them exactly as they are (a Bernoulli(1) or Bernoulli(0) draw).
PREBINARIZED = ("binarized_mnist",)


def _load_tfds(config: DataConfig, split: str):
    builder = builder_for(config)
    features = builder.info.features
    if "image" not in features:
        raise UsageError(
            f"dataset {config.dataset!r} has features {list(features)}; gen_keras needs 'image'"
        )
    shape = tuple(features["image"].shape)
    if None in shape or len(shape) != 3:
        raise UsageError(
            f"dataset {config.dataset!r} has images of shape {shape}; "
            "gen_keras needs a fixed [height, width, channels]"
        )
    num_examples = None
    if builder.info.splits:  # empty only for datasets mocked without metadata
        try:
            num_examples = builder.info.splits[split].num_examples
        except (KeyError, ValueError) as e:
            raise UsageError(
                f"split={split!r} is not a split of {config.dataset!r} "
                f"({', '.join(builder.info.splits)}): {e}"
            ) from None
        if num_examples == 0:  # TFDS raises deep inside as_dataset for an empty slice
            raise UsageError(f"split={split!r} of {config.dataset!r} is empty")
    ds = builder.as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False)
    )
    labelled = "label" in features
    binary = config.dataset in PREBINARIZED

    def select(d):
        image = tf.minimum(d["image"], 1) * 255 if binary else d["image"]
        label = d["label"] if labelled else tf.constant(0, tf.int64)  # unlabelled: class 0
        return {"image": image, "label": label}

    ds = ds.map(select)
    if num_examples is None:
        num_examples = int(ds.reduce(0, lambda n, _: n + 1))
    return ds, num_examples, shape, features["label"].num_classes if labelled else 0


EXAMPLE_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),  # raw uint8 pixels, row-major [H, W, C]
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def to_example(image: np.ndarray, label: int) -> bytes:
    """uint8 [H, W, C] image and its label -> a serialized tf.train.Example."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def tfrecord_source(files, shape, num_classes: int, num_examples: int | None = None):
    """Gzipped TFRecords of `to_example` records -> an ImageData source.

    files: paths or glob patterns (TFX's FnArgs.train_files style).
    """
    paths = sorted(p for pattern in files for p in tf.io.gfile.glob(pattern))
    if not paths:
        raise UsageError(f"no TFRecord files match {list(files)}")
    shape = tuple(int(s) for s in shape)

    def parse(record):
        example = tf.io.parse_single_example(record, EXAMPLE_FEATURES)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape)
        return {"image": image, "label": example["label"]}

    ds = tf.data.TFRecordDataset(paths, compression_type="GZIP").map(parse)
    if num_examples is None:
        num_examples = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    return ds, num_examples, shape, num_classes


def load_raw(config: DataConfig, split: str):
    """(dataset of {"image": uint8 [H, W, C], "label"}, num_examples, shape, num_classes)
    for a split of the configured TFDS dataset or manual_dir, with no preprocessing."""
    return (_load_manual if config.manual_dir else _load_tfds)(config, split)


class ImageData:
    """One split of an image dataset: cached raw pixels and seeded per-epoch pipelines.

    Pipelines are pure functions of (seed, epoch, position): an epoch can be rebuilt and
    fast-forwarded after a restart, so a resumed run sees exactly the batches it would
    have seen.
    """

    def __init__(self, config: DataConfig, split: str, training: bool, source=None):
        """source: (raw dataset, num_examples, shape, num_classes) to use instead of TFDS or
        manual_dir, e.g. `tfrecord_source(...)` for ExampleGen output."""
        self.config = config
        self.split = split
        self.training = training
        raw, self.num_examples, shape, num_classes = source or load_raw(config, split)
        self.spec = DataSpec(tuple(int(s) for s in shape), config.binarization, num_classes)
        if self.num_examples == 0:
            raise UsageError(f"split {split!r} of {config.dataset!r} is empty")
        self._raw = raw
        self._cached: tf.data.Dataset | None = None

    def _base(self) -> tf.data.Dataset:
        if self._cached is None:
            ds = self._raw.cache()
            # Fill the cache in one full pass now. An iterator that stops early (a summary
            # batch, take(steps)) resets a half-written cache when it is destroyed, which
            # can race with another iterator and end it early ("End of sequence").
            ds.reduce(np.int64(0), lambda n, _: n + 1)
            self._cached = ds
        return self._cached

    def _preprocess(self, seed: int, epoch: int):
        mode, spec = self.spec.mode, self.spec
        # Evaluation of a dynamic mode uses the static draw, so eval numbers are comparable.
        dynamic = mode == "binary_dynamic" and self.training
        epoch_seed = tf.constant([seed % (2**31), epoch], tf.int32)

        def fn(position, example):
            uniform = None
            if dynamic:
                key = tf.random.experimental.stateless_fold_in(epoch_seed, position)
                uniform = tf.random.stateless_uniform(spec.shape, seed=key)
            elif mode in ("binary_static", "binary_dynamic"):
                uniform = binarization_uniform(example["image"], self.config.binarization_seed)
            image = pixels_to_model(example["image"], mode, uniform)
            image = tf.ensure_shape(image, spec.shape)
            return {"image": image, "label": tf.cast(example["label"], tf.int32)}

        return fn

    def dataset(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        skip: int = 0,
        steps: int | None = None,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """Global batches of {"image", "label"}, or this input pipeline's replica batches.

        Training pipelines shuffle with (seed, epoch) and drop remainders: one pass (a Keras
        `fit` epoch; reshuffled each pass), or with `steps`/`skip` an endless repeat that
        starts `skip` global batches in and takes `steps`. Evaluation pipelines keep order
        and the last partial batch.

        With an `input_context` (from `strategy.distribute_datasets_from_function`) every
        pipeline builds the same global batches and keeps its slice, split into one element
        per local replica: any number of workers and replicas train on exactly the batches
        of a single worker (slices of a partial eval batch may be empty).
        """
        ds = self._base()
        if self.training:
            shuffle_seed = (seed * 1_000_003 + epoch) % (2**31)
            buffer = min(self.num_examples, _SHUFFLE_BUFFER)
            ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
            if steps is not None or skip:  # the harness: a fixed number of steps per epoch
                ds = ds.repeat()
        ds = ds.enumerate().map(
            self._preprocess(seed, epoch), num_parallel_calls=_PARALLEL_CALLS, deterministic=True
        )
        ds = ds.batch(batch_size, drop_remainder=self.training)
        if skip:
            ds = ds.skip(skip)
        if steps is not None:
            ds = ds.take(steps)
        if input_context is not None:
            ds = _replica_slices(ds, batch_size, input_context, self.training)
        return _fixed_parallelism(ds)

    def steps_per_epoch(self, global_batch: int) -> int:
        """Full batches in one pass (training) or batches covering the split (eval)."""
        if self.training:
            return max(1, self.num_examples // global_batch)
        return -(-self.num_examples // global_batch)


def _replica_slices(ds: tf.data.Dataset, global_batch: int, ctx, training: bool):
    """Global batches -> this pipeline's per-replica slices, one element per local replica."""
    per = ctx.get_per_replica_batch_size(global_batch)
    local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    first = ctx.input_pipeline_id * local

    def take(batch, replica):
        part = {k: v[replica * per : (replica + 1) * per] for k, v in batch.items()}
        if training:  # full batches: keep the static shape (XLA compiles once)
            part = {k: tf.ensure_shape(v, [per, *v.shape[1:]]) for k, v in part.items()}
        return part

    replicas = tf.data.Dataset.range(first, first + local)
    return ds.flat_map(lambda b: replicas.map(lambda r: take(b, r)))


def load(
    name: str = "mnist",
    split: str = "train",
    binarization: str = "binary_static",
    *,
    data_dir: str | None = None,
    training: bool | None = None,
    **config,
) -> ImageData:
    """One split of a TFDS image dataset, ready for `model.fit` / `model.evaluate`:

        train = data.load("mnist", split="train[:2048]", binarization="binary_static")
        model.fit(train.dataset(batch_size=64), epochs=1)

    `.spec` describes the images (shape, data mode, classes) for `models.build`.
    training: shuffle and drop the last partial batch (default: splits named train*).
    Other DataConfig fields (manual_dir, download, binarization_seed) pass through.
    """
    cfg = DataConfig(dataset=name, binarization=binarization, data_dir=data_dir, **config)
    if training is None:
        training = split.startswith("train")
    return ImageData(cfg, split, training)


def labeled_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices int64 [per_class * num_classes] into `labels`: `per_class` of every class.

    A seeded draw without replacement (numpy default_rng(seed)), returned sorted: the same
    labels and seed give the same images. Raises UsageError if a class has too few.
    """
    counts = np.bincount(labels)
    classes = np.unique(labels)
    short = [int(k) for k in classes if counts[k] < per_class]
    if per_class <= 0 or short:
        raise UsageError(
            f"labels_per_class={per_class} must be > 0 and at most the smallest class "
            f"({int(counts[classes].min())} images; short classes: {short})"
        )
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == k), per_class, replace=False) for k in classes]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def split_labels(data: ImageData) -> np.ndarray:
    """The labels of every example of a split, int64 [num_examples], in split order."""
    return np.concatenate([ex["label"].numpy() for ex in data._base().batch(10_000)])


class SemiSupervisedData:
    """Training batches that mix a labeled subset and the whole (unlabeled) split.

    Every global batch holds `labeled_per_batch` labeled examples first, then
    `batch_size - labeled_per_batch` examples of the split with label -1 (unlabeled; the
    labeled images are also in that pool, as in Kingma et al. 2014). An epoch is one pass
    over the unlabeled pool; the labeled stream repeats, reshuffled, as often as it needs.
    Like `ImageData`, batches are a pure function of (seed, epoch, position), so a resumed
    run sees the batches it would have seen. Duck-types `ImageData` for `train.fit`.
    """

    training = True

    def __init__(self, data: ImageData, labeled_index: np.ndarray, labeled_per_batch: int):
        """labeled_index: int [L] positions in the split of the labeled examples."""
        if not data.training:
            raise UsageError("SemiSupervisedData needs a training ImageData")
        self.data = data
        self.spec = data.spec
        self.num_examples = data.num_examples
        self.labeled_index = np.asarray(labeled_index, np.int64)
        self.labeled_per_batch = int(labeled_per_batch)
        if self.labeled_per_batch <= 0:
            raise UsageError(f"labeled_per_batch={labeled_per_batch} must be > 0")
        self._labeled: tf.data.Dataset | None = None

    @classmethod
    def balanced(cls, data: ImageData, per_class: int, seed: int, labeled_per_batch: int):
        """`labeled_subset` of the split's labels, drawn with seed."""
        return cls(data, labeled_subset(split_labels(data), per_class, seed), labeled_per_batch)

    def _labeled_base(self) -> tf.data.Dataset:
        if self._labeled is None:
            keep = tf.constant(self.labeled_index)
            ds = (
                self.data._base()
                .enumerate()
                .filter(lambda i, _: tf.reduce_any(tf.equal(i, keep)))
                .map(lambda _, example: example)
                .cache()
            )
            ds.reduce(np.int64(0), lambda n, _: n + 1)  # fill the cache in one pass
            self._labeled = ds
        return self._labeled

    def dataset(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        skip: int = 0,
        steps: int | None = None,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """Global batches {"image", "label"} (label -1: unlabeled), or replica slices."""
        n_lab = self.labeled_per_batch
        if batch_size <= n_lab:
            raise UsageError(
                f"batch_size={batch_size} must exceed labeled_per_batch={n_lab} (the rest of "
                "every batch is unlabeled)"
            )
        passes = None if steps is None else skip + steps  # the harness: repeat, then take
        unlabeled = self.data.dataset(batch_size - n_lab, seed=seed, epoch=epoch, steps=passes).map(
            lambda b: {"image": b["image"], "label": tf.fill(tf.shape(b["label"]), -1)}
        )
        # Another stream seed for the labeled images, so their shuffles and dynamic
        # binarization draws are not those of the unlabeled stream.
        lab_seed = (seed * 7919 + 104_729) % (2**31)
        labeled = (
            self._labeled_base()
            .shuffle(
                len(self.labeled_index),
                seed=(lab_seed * 1_000_003 + epoch) % (2**31),
                reshuffle_each_iteration=True,
            )
            .repeat()
            .enumerate()
            .map(self.data._preprocess(lab_seed, epoch))
            .batch(n_lab, drop_remainder=True)
        )
        ds = tf.data.Dataset.zip(labeled, unlabeled).map(
            lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in ("image", "label")}
        )
        if skip:
            ds = ds.skip(skip)
        if steps is not None:
            ds = ds.take(steps)
        if input_context is not None:
            ds = _replica_slices(ds, batch_size, input_context, True)
        return _fixed_parallelism(ds)

    def steps_per_epoch(self, global_batch: int) -> int:
        """Full batches in one pass over the unlabeled pool."""
        return max(1, self.num_examples // (global_batch - self.labeled_per_batch))
