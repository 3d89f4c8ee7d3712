"""Datasets through Ray Data: read Parquet/CSV (local or s3:// / gs://), check, split, preprocess.

Everything streams: the driver reads only file metadata and a few aggregates (mean, std, classes of the
training split); rows flow from the files through ``map_batches`` straight into the training workers'
shards. The :class:`Preprocessor` fitted here is saved with every checkpoint and model version, and
Serve applies the very same transform to requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
from pathlib import Path
from typing import Any

import numpy as np

from atoll import filesystems
from atoll.errors import DataError

DEMO_PREFIX = "demo:"
DEMO_DATASETS = ("digits", "digits_images", "diabetes", "sms_spam")


# ------------------------------------------------------------------------------------------------
# Files


def _filesystem(uri: str):
    """(pyarrow filesystem, path within it) for a dataset's local path or URI."""
    return filesystems.resolve(uri, DataError)


def is_missing(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.NotFound


def _files(uri: str) -> list[Any]:
    """FileInfos of the dataset's data files (one file, or every file of a folder)."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"dataset {uri}: not found. Check dataset.path in the training spec "
                        f"(or use `demo:digits` for the built-in demo).")
    if info.type == pafs.FileType.File:
        return [info]
    # By name: a folder's rows have one order (a listing's order is the filesystem's whim).
    found = sorted((f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                    if f.type == pafs.FileType.File and not Path(f.path).name.startswith((".", "_"))),
                   key=lambda f: f.path)
    if not found:
        raise DataError(f"dataset {uri}: the folder holds no data files.")
    return found


def parquet_footers(uri: str) -> list[tuple[str, Any]]:
    """``(file, footer)`` of every file of a Parquet dataset (pyarrow's ``FileMetaData``: schema, row groups),
    reading nothing else; the file as a path in the dataset's filesystem (:func:`atoll.filesystems.resolve`).

    Raises:
        DataError: a file that is not Parquet (naming it).
    """
    import pyarrow.parquet as pq

    fs, _ = _filesystem(uri)
    footers = []
    for info in _files(uri):
        try:
            with fs.open_input_file(info.path) as f:
                footers.append((info.path, pq.ParquetFile(f).metadata))
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file it cannot read
            raise DataError(f"dataset {uri}: cannot read {info.path} as Parquet: {exc}") from None
    return footers


def row_groups(footers: list[tuple[str, Any]]) -> list[tuple[str, int, int]]:
    """``(file, row group, rows)`` of every row group of :func:`parquet_footers`."""
    return [(path, i, meta.row_group(i).num_rows) for path, meta in footers for i in range(meta.num_row_groups)]


def detect_format(uri: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = uri.rstrip("/").lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    # A folder: look at its files.
    suffixes = {Path(f.path).suffix.lower() for f in _files(uri)}
    return "csv" if suffixes <= {".csv", ".gz"} else "parquet"


#: Datasets up to this size (all files together) are fingerprinted by their bytes; bigger ones by metadata.
FINGERPRINT_CONTENT_BYTES = 256 << 20


def fingerprint(uri: str) -> str:
    """An id of the dataset's contents, for lineage.

    ``sha256:…``: the SHA-256 of every file's name (relative to the dataset folder) and bytes, streamed,
    when the files total at most :data:`FINGERPRINT_CONTENT_BYTES`: the same data anywhere has the same id,
    and any change to it changes the id. ``stat:…`` for bigger datasets: a SHA-256 of names, sizes and
    modification times only (reading them all on the driver just to label a run would cost too much).
    """
    fs, root = _filesystem(uri)
    files = sorted(_files(uri), key=lambda f: f.path)
    by_content = sum(f.size or 0 for f in files) <= FINGERPRINT_CONTENT_BYTES
    digest = hashlib.sha256()
    for info in files:
        name = "" if info.path == root else posixpath.relpath(info.path, root)
        if not by_content:
            digest.update(f"{name}\0{info.size}\0{info.mtime_ns}\0".encode())
            continue
        digest.update(f"{name}\0{info.size}\0".encode())  # the size delimits the bytes: no two ways to split
        with fs.open_input_stream(info.path, compression=None) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return ("sha256:" if by_content else "stat:") + digest.hexdigest()[:16]


def read_schema(uri: str, fmt: str) -> tuple[dict[str, str], int | None]:
    """Column types and (for Parquet) the row count, from file metadata only."""
    import pyarrow.dataset as pads

    fs, path = _filesystem(uri)
    try:
        dataset = pads.dataset(path, filesystem=fs, format=fmt)
        schema = dataset.schema
        rows = dataset.count_rows() if fmt == "parquet" else None
    except Exception as exc:  # malformed files: pyarrow's message is the useful part
        raise DataError(f"dataset {uri}: cannot read it as {fmt}: {exc}") from None
    return {f.name: str(f.type) for f in schema}, rows


BLOCK_BYTES = 64 * 2**20


def read(uri: str, fmt: str, *, small: bool = False, block_rows: int | None = None):
    """A Ray Dataset over the files: lazy (nothing is read until it is consumed), or, for ``small`` data,
    read here in one pyarrow scan and put in the object store as ~64 MiB blocks, or blocks of at most
    ``block_rows`` rows (Ray Data's read planning, listing and footer tasks, takes seconds; a small file reads
    in milliseconds)."""
    import ray.data

    fs, path = _filesystem(uri)
    if small:
        import pyarrow.dataset as pads

        table = pads.dataset(path, filesystem=fs, format=fmt).to_table()
        blocks = max(1, -(-table.nbytes // BLOCK_BYTES))
        step = max(1, -(-table.num_rows // blocks))
        step = min(step, block_rows) if block_rows else step
        return ray.data.from_arrow([table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)])
    reader = ray.data.read_csv if fmt == "csv" else ray.data.read_parquet
    return reader(path, filesystem=fs)


# ------------------------------------------------------------------------------------------------
# The demo datasets, shipped with scikit-learn (BSD-3-Clause), so no one downloads them:
# - digits: 1,797 real 8x8 handwritten digits (UCI, E. Alpaydin and C. Kaynak), 10 classes;
# - diabetes: 442 patients, 10 baseline measurements and a disease-progression score a year later
#   (B. Efron et al., "Least Angle Regression", Annals of Statistics, 2004), for regression;
# and one Atoll ships itself (atoll/datasets/, with its licence and source):
# - sms_spam: 4,862 SMS messages, ham or spam (the SMS Spam Collection, UCI, CC BY 4.0), for text.


def _png(image: np.ndarray) -> bytes:
    """A digits image (ink 0–16) as the bytes of an 8-bit grey PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(image * (255 / 16)).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _demo_frame(name: str):
    import pandas as pd
    from sklearn import datasets

    if name == "digits":
        digits = datasets.load_digits()
        frame = pd.DataFrame(digits.data.astype("float32"), columns=[f"px{i}" for i in range(64)])
        frame["label"] = digits.target.astype("int64")
        return frame
    if name == "digits_images":  # the same digits as 8×8 grey PNGs (0–16 ink scaled to 0–255)
        digits = datasets.load_digits()
        return pd.DataFrame({"image": [_png(img) for img in digits.images],
                             "label": digits.target.astype("int64")})
    if name == "sms_spam":
        return pd.read_csv(Path(__file__).with_name("datasets") / "sms_spam.csv.gz", dtype=str)
    diabetes = datasets.load_diabetes(scaled=False)  # the measurements in their own units
    frame = pd.DataFrame(diabetes.data.astype("float32"), columns=diabetes.feature_names)
    frame["progression"] = diabetes.target.astype("float32")
    return frame


def demo_paths(storage_root: str, name: str = "digits") -> dict[str, str]:
    root = filesystems.join(storage_root, "datasets")
    return {"train": filesystems.join(root, f"{name}.parquet"), "holdout": filesystems.join(root, f"{name}_holdout.parquet")}


def prepare_demo(storage_root: str, name: str = "digits", holdout: int | None = None) -> dict[str, str]:
    """Export the demo dataset to Parquet on first use (train file + a held-out file) under the storage root,
    local or an object store; return their paths (URIs on an object store).

    The held-out rows (a fixed, seeded sample) never reach training: they are what the quickstart sends
    to the live endpoint.
    """
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if name not in DEMO_DATASETS:
        raise DataError(f"unknown demo dataset {name!r}; available: {', '.join(DEMO_DATASETS)}")
    paths = demo_paths(storage_root, name)
    targets = {key: filesystems.resolve(uri, DataError) for key, uri in paths.items()}
    if all(fs.get_file_info(path).type == pafs.FileType.File for fs, path in targets.values()):
        return paths
    frame = _demo_frame(name)
    holdout = holdout if holdout is not None else round(len(frame) / 10)  # digits: 180 of 1,797
    rng = np.random.default_rng(1234)
    held = np.zeros(len(frame), dtype=bool)
    held[rng.choice(len(frame), size=holdout, replace=False)] = True
    for key, part in (("train", frame[~held]), ("holdout", frame[held])):
        fs, path = targets[key]
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
        fs.create_dir(posixpath.dirname(path), recursive=True)
        if not isinstance(fs, pafs.LocalFileSystem):
            pq.write_table(table, path, filesystem=fs)  # an object appears whole when its upload completes
            continue
        # A name of its own: two jobs exporting at once must not write into each other's temporary file.
        tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)  # atomic: a half-written file is never visible
    return paths


def resolve_path(path: str, storage_root: str) -> str:
    """``demo:digits`` → the exported Parquet file; anything else is returned as is."""
    if path.startswith(DEMO_PREFIX):
        return prepare_demo(storage_root, path[len(DEMO_PREFIX):])["train"]
    return path


# ------------------------------------------------------------------------------------------------
# Checking a dataset against a spec, before any worker starts


@dataclasses.dataclass
class DatasetPlan:
    """What the training run will read: resolved path, format, columns, fingerprint."""

    uri: str
    format: str
    features: list[str]
    label: str
    rows: int | None
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NUMERIC_PREFIXES = ("int", "uint", "float", "double", "halffloat", "bool", "decimal")


STRING_PREFIXES = ("string", "large_string", "utf8", "large_utf8")
BINARY_PREFIXES = ("binary", "large_binary", "fixed_size_binary")


def plan(uri: str, fmt: str, features: list[str] | None, label: str, *, numeric_label: bool = False,
         text: bool = False, image: bool = False) -> DatasetPlan:
    """Check the dataset exists, has the label and numeric features (and a numeric label when
    ``numeric_label``: a regression target; one string feature, the text, when ``text``; one binary
    feature, the encoded images, when ``image``), and is not empty.

    Raises:
        DataError: naming the column or file and the fix.
    """
    _files(uri)  # a missing path fails here, with the fix
    fmt = detect_format(uri, fmt)
    columns, rows = read_schema(uri, fmt)
    if label not in columns:
        raise DataError(f"dataset {uri}: label column {label!r} does not exist; columns are "
                        f"{', '.join(columns)}. Set dataset.label.")
    chosen = features or [c for c in columns if c != label]
    one_of = STRING_PREFIXES if text else BINARY_PREFIXES if image else None
    if one_of and not features:  # the one text or image column besides the label
        chosen = [c for c in chosen if columns[c].startswith(one_of)] or chosen
    missing = [c for c in chosen if c not in columns]
    if missing:
        raise DataError(f"dataset {uri}: feature column(s) {', '.join(missing)} do not exist; "
                        f"columns are {', '.join(columns)}. Fix dataset.features.")
    if label in chosen:
        raise DataError(f"dataset {uri}: the label {label!r} is also listed as a feature; remove it.")
    if one_of:
        what = ("a text task reads one string column, the text" if text else
                "an image task reads one binary column of encoded images (PNG, JPEG, ...)")
        if len(chosen) != 1 or not columns[chosen[0]].startswith(one_of):
            kinds = ", ".join(f"{c} ({columns[c]})" for c in chosen)
            raise DataError(f"dataset {uri}: {what}; found {kinds}. Set dataset.features: "
                            f"[the {'text' if text else 'image'} column].")
        bad = []
    else:
        bad = [f"{c} ({columns[c]})" for c in chosen if not columns[c].startswith(NUMERIC_PREFIXES)]
    if bad:
        raise DataError(f"dataset {uri}: feature column(s) {', '.join(bad)} are not numeric; "
                        f"encode them as numbers or leave them out of dataset.features.")
    if numeric_label and not columns[label].startswith(NUMERIC_PREFIXES):
        raise DataError(f"dataset {uri}: label column {label!r} is {columns[label]}, not numeric; a regression "
                        f"target must be a number (or use task: tabular-classification for classes).")
    if rows == 0:
        raise DataError(f"dataset {uri}: it is empty (0 rows).")
    return DatasetPlan(uri=uri, format=fmt, features=chosen, label=label, rows=rows, fingerprint=fingerprint(uri))


# ------------------------------------------------------------------------------------------------
# Split and preprocessing


def _row_bucket(frame) -> np.ndarray:
    """A stable bucket 0..9999 per row from its contents: the same row lands in the same split on every
    run and every machine, with no shuffle and no materialisation."""
    import pandas as pd

    return (pd.util.hash_pandas_object(frame, index=False).to_numpy() % 10_000).astype(np.int64)


class SplitFilter:
    """``map_batches`` callable keeping the training or the validation part of each batch."""

    def __init__(self, columns: list[str], validation_fraction: float, keep: str, salt: int = 0):
        self.columns, self.keep, self.salt = columns, keep, salt
        self.threshold = int(validation_fraction * 10_000)

    def __call__(self, batch):
        bucket = (_row_bucket(batch[self.columns]) + self.salt * 7919) % 10_000
        mask = bucket < self.threshold if self.keep == "validation" else bucket >= self.threshold
        return batch[mask]


def split(ds, plan: DatasetPlan, validation_fraction: float, seed: int = 0):
    """Deterministic train/validation split of a Ray Dataset (streaming; seed changes the split)."""
    columns = plan.features + [plan.label]
    train = ds.map_batches(SplitFilter(columns, validation_fraction, "train", seed), batch_format="pandas")
    val = ds.map_batches(SplitFilter(columns, validation_fraction, "validation", seed), batch_format="pandas")
    return train, val


def encode_classes(classes: list[Any], y: np.ndarray) -> np.ndarray:
    """Labels as int64 indices into ``classes`` (the classes the training split holds).

    Raises:
        DataError: a label the training split never had.
    """
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.fromiter((index[v] for v in y.tolist()), dtype=np.int64, count=len(y))
    except KeyError as exc:
        raise DataError(f"label {exc.args[0]!r} was not seen in the training split") from None


class FittedState:
    """What every task's fitted state is (a dataclass with ``classes``): plain data, saved as JSON with each
    checkpoint and version through ``to_dict`` and rebuilt with ``from_dict``, never pickled."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**data)


@dataclasses.dataclass
class Preprocessor(FittedState):
    """Standardisation (fitted on the training split) and label encoding; JSON-serialisable.

    A classifier's labels become class indices (``classes``); a regression target (``target_mean`` set,
    ``classes`` empty) is standardised too, so the loss is in units of its spread, and turned back into
    the target's own units for metrics and answers.
    """

    features: list[str]
    label: str
    mean: list[float]
    std: list[float]
    classes: list[Any]
    target_mean: float | None = None
    target_std: float | None = None

    @property
    def input_dim(self) -> int:
        return len(self.features)

    def transform_features(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        # Written row-major whatever x's layout (pandas hands columns): what torch and ONNX Runtime take, with no
        # extra copy; then scaled in place. One new array, two passes.
        centred = np.empty(x.shape, dtype=np.float32)
        np.subtract(x, np.asarray(self.mean, dtype=np.float32), out=centred)
        centred *= 1 / np.asarray(self.std, dtype=np.float32)
        return centred

    def encode_labels(self, y: np.ndarray) -> np.ndarray:
        if self.target_mean is not None:
            return ((np.asarray(y, dtype=np.float64) - self.target_mean) / self.target_std).astype(np.float32)
        return encode_classes(self.classes, y)

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """``map_batches`` transform: a pandas batch → ``{"x": float32 [n, d], "y": int64 or float32 [n]}``."""
        x = self.transform_features(batch[self.features].to_numpy())
        return {"x": x, "y": self.encode_labels(batch[self.label].to_numpy())}


class _PartialStats:
    """Per-batch sums for mean/std, and the labels seen (or, for a numeric target, its sum and sum of
    squares): one streaming pass fits the preprocessor."""

    def __init__(self, features: list[str], label: str, target_moments: bool = False):
        self.features, self.label, self.target_moments = features, label, target_moments

    def __call__(self, batch):
        import pandas as pd

        x = batch[self.features].to_numpy(dtype=np.float64)
        part = {"n": [len(x)], "sum": [x.sum(0).tolist()], "sumsq": [(x * x).sum(0).tolist()]}
        if self.target_moments:
            y = batch[self.label].to_numpy(dtype=np.float64)
            part |= {"labels": [[]], "y_sum": [float(y.sum())], "y_sumsq": [float((y * y).sum())]}
        else:
            part["labels"] = [sorted(set(batch[self.label].tolist()), key=str)]
        return pd.DataFrame(part)


def fit_preprocessor(train_ds, plan: DatasetPlan, *, regression: bool = False) -> Preprocessor:
    """Fit standardisation and the label classes (or, for ``regression``, the target's mean and spread)
    on the training split (one streaming pass)."""
    stats = _PartialStats(plan.features, plan.label, target_moments=regression)
    parts = train_ds.map_batches(stats, batch_format="pandas").take_all()
    n = sum(p["n"] for p in parts)
    if n == 0:
        raise DataError(f"dataset {plan.uri}: the training split is empty; add rows or lower "
                        f"dataset.validation_fraction.")
    total = np.sum([np.asarray(p["sum"]) for p in parts if p["n"]], axis=0)
    total_sq = np.sum([np.asarray(p["sumsq"]) for p in parts if p["n"]], axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    # A constant feature has std 0: divide by 1 instead, so it becomes 0 rather than NaN.
    std[std < 1e-8] = 1.0
    classes = sorted({v for p in parts for v in p["labels"]}, key=lambda v: (str(type(v)), v))
    pre = Preprocessor(features=plan.features, label=plan.label, mean=mean.tolist(), std=std.tolist(),
                       classes=[v.item() if hasattr(v, "item") else v for v in classes])
    if regression:
        y_mean = sum(p["y_sum"] for p in parts) / n
        y_var = sum(p["y_sumsq"] for p in parts) / n - y_mean * y_mean
        pre.target_mean, pre.target_std = float(y_mean), float(max(y_var, 0.0) ** 0.5 or 1.0)
    return pre


def to_training(ds, pre: Preprocessor, cache: bool = False):
    """The dataset as model inputs ``{"x", "y"}`` (streaming ``map_batches``).

    With ``cache``, the preprocessed rows are kept in the cluster's object store (not on the driver) so
    that epochs after the first skip reading and preprocessing: worth it when the data fits easily.
    """
    out = ds.map_batches(pre, batch_format="pandas")
    return out.materialize() if cache else out


CACHE_LIMIT_BYTES = 512 * 2**20


def should_cache(plan: DatasetPlan, setting: bool | str = "auto", row_bytes: int | None = None) -> bool:
    """Cache in the object store when asked, or (auto) when the rows as model inputs take < 512 MiB:
    ``row_bytes`` each (the task knows, once fitted; before that, float32 features), or, while a CSV's
    row count is unknown, when its files take less than that."""
    if setting != "auto":
        return bool(setting)
    if plan.rows is None:
        return sum(f.size for f in _files(plan.uri)) < CACHE_LIMIT_BYTES
    return plan.rows * (row_bytes or (len(plan.features) + 1) * 4) < CACHE_LIMIT_BYTES


def quiet_progress() -> None:
    """Ray Data's progress bars flood job logs; Atoll reports its own progress."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def describe(uri: str) -> dict[str, Any]:
    """Size and schema of a dataset, for people (the quickstart shows it)."""
    fmt = detect_format(uri)
    columns, rows = read_schema(uri, fmt)
    size = sum(f.size for f in _files(uri))
    return {"uri": uri, "format": fmt, "rows": rows, "bytes": size, "columns": columns}

