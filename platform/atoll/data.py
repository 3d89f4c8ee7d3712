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
import json
import math
import os
import posixpath
from pathlib import Path
from typing import Any

import numpy as np

from atoll import filesystems
from atoll.errors import DataError

DEMO_PREFIX = "demo:"
DEMO_DATASETS = ("digits", "digits_images", "diabetes", "sms_spam", "sms_chat", "penguins")


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


def _csv_options():
    """How every CSV is read: an empty cell (or NA, N/A, null, ...) is a gap in a column of words too, not
    an empty word (pyarrow's default for strings), as it already is in a column of numbers."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(strings_can_be_null=True)


def file_format(fmt: str):
    """``fmt`` as pyarrow.dataset takes it (a CSV with :func:`_csv_options`)."""
    import pyarrow.dataset as pads

    return pads.CsvFileFormat(convert_options=_csv_options()) if fmt == "csv" else fmt


def read_schema(uri: str, fmt: str) -> tuple[dict[str, str], int | None]:
    """Column types and (for Parquet) the row count, from file metadata only."""
    import pyarrow.dataset as pads

    fs, path = _filesystem(uri)
    try:
        dataset = pads.dataset(path, filesystem=fs, format=file_format(fmt))
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

        table = pads.dataset(path, filesystem=fs, format=file_format(fmt)).to_table()
        blocks = max(1, -(-table.nbytes // BLOCK_BYTES))
        step = max(1, -(-table.num_rows // blocks))
        step = min(step, block_rows) if block_rows else step
        return ray.data.from_arrow([table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)])
    if fmt == "csv":
        return ray.data.read_csv(path, filesystem=fs, convert_options=_csv_options())
    # Ray 2.60 reads Parquet through its new DataSourceV2 by default, whose file listing adds about a second to
    # every read (its listing threads poll every 0.5 s as they stop), and a streamed epoch reads the files twice
    # (training, then validation split). Ray's V1 reader reads a small file ~9x faster and a 200k-row table as
    # fast as V2 (bench/parquet_read.py). The flag is read here, when the read is planned.
    ray.data.DataContext.get_current().use_datasource_v2 = False
    return ray.data.read_parquet(path, filesystem=fs)


# ------------------------------------------------------------------------------------------------
# The demo datasets, shipped with scikit-learn (BSD-3-Clause), so no one downloads them:
# - digits: 1,797 real 8x8 handwritten digits (UCI, E. Alpaydin and C. Kaynak), 10 classes;
# - diabetes: 442 patients, 10 baseline measurements and a disease-progression score a year later
#   (B. Efron et al., "Least Angle Regression", Annals of Statistics, 2004), for regression;
# and one Atoll ships itself (atoll/datasets/, with its licence and source):
# - sms_spam: 4,862 SMS messages, ham or spam (the SMS Spam Collection, UCI, CC BY 4.0), for text;
# - penguins: 344 Palmer penguins (CC0): species from island, sex (words, with gaps), bill, flipper and
#   body mass (numbers, with gaps) and year, a real table for mixed tabular features.


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
    if name == "sms_chat":  # the same messages as chats: asked for a text (spam or not), the assistant writes it
        sms = pd.read_csv(Path(__file__).with_name("datasets") / "sms_spam.csv.gz", dtype=str)
        asks = {"spam": "Write a spam text message.", "ham": "Write a text message to a friend."}
        return pd.DataFrame({"messages": [[{"role": "user", "content": asks[label]},
                                           {"role": "assistant", "content": text}]
                                          for text, label in zip(sms["text"], sms["label"])]})
    if name == "penguins":  # words stay words, NA cells are gaps (nulls in the Parquet export)
        return pd.read_csv(Path(__file__).with_name("datasets") / "penguins.csv.gz",
                           dtype={"species": str, "island": str, "sex": str})
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
    """What the training run will read: resolved path, format, columns, fingerprint; for a table, each
    feature's kind (``numeric`` or ``categorical``, :mod:`atoll.tables`) and Arrow type."""

    uri: str
    format: str
    features: list[str]
    label: str
    rows: int | None
    fingerprint: str
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    types: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NUMERIC_PREFIXES = ("int", "uint", "float", "double", "halffloat", "bool", "decimal")


STRING_PREFIXES = ("string", "large_string", "utf8", "large_utf8")
BINARY_PREFIXES = ("binary", "large_binary", "fixed_size_binary")


def _unknown(names: list[str], columns: dict[str, str], field: str, uri: str) -> None:
    """Refuse column names a spec field lists that the dataset does not have (with a "did you mean")."""
    import difflib

    unknown = [n for n in names if n not in columns]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(columns), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"dataset {uri}: {field} names column(s) {', '.join(unknown)} that do not exist{hint}; "
                        f"columns are {', '.join(columns)}.")


def column_kinds(columns: dict[str, str], features: list[str], *, categorical: list[str] | None = None,
                 numeric: list[str] | None = None, uri: str = "") -> dict[str, str]:
    """Each feature's kind: inferred from its Arrow type (:func:`atoll.tables.arrow_kind`), then as
    ``categorical`` / ``numeric`` force it.

    Raises:
        DataError: a feature of a type no table takes (naming it and the fix).
    """
    from atoll import tables

    kinds = {}
    for f in features:
        kind = tables.CATEGORICAL if f in (categorical or []) else tables.NUMERIC if f in (numeric or []) \
            else tables.arrow_kind(columns[f])
        if kind is None:
            raise DataError(f"dataset {uri}: feature column {f} ({columns[f]}) is neither numbers nor words; "
                            f"leave it out with dataset.exclude: [{f}], or list it in dataset.categorical to take "
                            f"its values as levels.")
        kinds[f] = kind
    return kinds


def plan(uri: str, fmt: str, features: list[str] | None, label: str, *, numeric_label: bool = False,
         text: bool = False, image: bool = False, categorical: list[str] | None = None,
         numeric: list[str] | None = None, exclude: list[str] | None = None) -> DatasetPlan:
    """Check the dataset exists, has the label and usable features, and is not empty.

    A table's features are numbers or words (:func:`column_kinds`; ``categorical``, ``numeric`` and
    ``exclude`` are the spec's ``dataset.*`` overrides), and its label a number when ``numeric_label`` (a
    regression target). A text task reads one string feature (``text``), an image task one binary feature of
    encoded images (``image``).

    Raises:
        DataError: naming the column or file and the fix.
    """
    _files(uri)  # a missing path fails here, with the fix
    fmt = detect_format(uri, fmt)
    columns, rows = read_schema(uri, fmt)
    if label not in columns:
        raise DataError(f"dataset {uri}: label column {label!r} does not exist; columns are "
                        f"{', '.join(columns)}. Set dataset.label.")
    for field, names in (("dataset.categorical", categorical), ("dataset.numeric", numeric),
                         ("dataset.exclude", exclude)):
        _unknown(list(names or []), columns, field, uri)
    chosen = [c for c in (features or [c for c in columns if c != label]) if c not in (exclude or [])]
    one_of = STRING_PREFIXES if text else BINARY_PREFIXES if image else None
    if one_of and not features:  # the one text or image column besides the label
        chosen = [c for c in chosen if columns[c].startswith(one_of)] or chosen
    missing = [c for c in chosen if c not in columns]
    if missing:
        raise DataError(f"dataset {uri}: feature column(s) {', '.join(missing)} do not exist; "
                        f"columns are {', '.join(columns)}. Fix dataset.features.")
    if label in chosen:
        raise DataError(f"dataset {uri}: the label {label!r} is also listed as a feature; remove it.")
    if not chosen:
        raise DataError(f"dataset {uri}: no feature column is left (dataset.exclude leaves out every one).")
    kinds: dict[str, str] = {}
    if one_of:
        what = ("a text task reads one string column, the text" if text else
                "an image task reads one binary column of encoded images (PNG, JPEG, ...)")
        if len(chosen) != 1 or not columns[chosen[0]].startswith(one_of):
            kinds_text = ", ".join(f"{c} ({columns[c]})" for c in chosen)
            raise DataError(f"dataset {uri}: {what}; found {kinds_text}. Set dataset.features: "
                            f"[the {'text' if text else 'image'} column].")
    else:
        kinds = column_kinds(columns, chosen, categorical=categorical, numeric=numeric, uri=uri)
    if numeric_label and not columns[label].startswith(NUMERIC_PREFIXES):
        raise DataError(f"dataset {uri}: label column {label!r} is {columns[label]}, not numeric; a regression "
                        f"target must be a number (or use task: tabular-classification for classes).")
    if rows == 0:
        raise DataError(f"dataset {uri}: it is empty (0 rows).")
    return DatasetPlan(uri=uri, format=fmt, features=chosen, label=label, rows=rows, fingerprint=fingerprint(uri),
                       kinds=kinds, types={c: columns[c] for c in [*chosen, label]})


# ------------------------------------------------------------------------------------------------
# Split and preprocessing


def _row_bucket(frame) -> np.ndarray:
    """A stable bucket 0..9999 per row from its contents: the same row lands in the same split on every
    run and every machine, with no shuffle and no materialisation."""
    import pandas as pd

    nested = [c for c in frame.columns if frame[c].dtype.kind not in "biufcmM" and _is_nested(frame[c])]
    if nested:  # lists (a chat's turns) are not hashable: their JSON text is
        frame = frame.assign(**{c: frame[c].map(_json_text) for c in nested})
    return (pd.util.hash_pandas_object(frame, index=False).to_numpy() % 10_000).astype(np.int64)


def _is_nested(column) -> bool:
    first = column.dropna().head(1).tolist()
    return bool(first) and isinstance(first[0], (list, tuple, np.ndarray, dict))


def _json_text(value: Any) -> str:
    """A nested cell (Arrow lists come as numpy arrays) as canonical JSON text."""
    return json.dumps(value, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


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
    columns = plan.features + ([plan.label] if plan.label else [])  # a text generator's rows have no label
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
    """A table's features as one float vector, and its labels (fitted on the training split); JSON-serialisable.

    Numeric features are standardised (``mean``, ``std``), a gap imputed with the mean and, for a column that
    had gaps in training, flagged in a missing-indicator input; categorical features are one-hot over their
    kept levels, or hashed, plus an ``other`` and a ``missing`` input (:mod:`atoll.tables`). ``columns`` holds
    each feature's encoding (None: every feature numeric without indicator, as versions before mixed tables
    were); ``report`` what fitting found (the profile, rows dropped for want of a label, ...).

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
    columns: list[dict[str, Any]] | None = None
    report: dict[str, Any] | None = None

    # ---- the layout of the encoded vector
    def _encoders(self) -> list[dict[str, Any]]:
        return self.columns or [{"kind": "numeric", "indicator": False} for _ in self.features]

    @staticmethod
    def width(column: dict[str, Any]) -> int:
        """Inputs one feature takes: 1 (+1 indicator) for a number; levels or buckets + other + missing."""
        from atoll import tables

        if column["kind"] == tables.NUMERIC:
            return 1 + bool(column.get("indicator"))
        return (tables.HASH_BUCKETS if column.get("hashed") else len(column["levels"])) + 2

    @property
    def input_dim(self) -> int:
        return sum(self.width(c) for c in self._encoders())

    @property
    def plain(self) -> bool:
        """Every feature a number with no missing-indicator: one input per feature, standardised."""
        return all(c["kind"] == "numeric" and not c.get("indicator") for c in self._encoders())

    def encoded_names(self) -> list[str]:
        """A name per input of the encoded vector, in order (``island=Biscoe``, ``sex:missing``, ...)."""
        names = []
        for f, column in zip(self.features, self._encoders(), strict=True):
            if column["kind"] == "numeric":
                names += [f] + ([f"{f}:missing"] if column.get("indicator") else [])
                continue
            from atoll import tables

            slots = ([f"{f}#{b}" for b in range(tables.HASH_BUCKETS)] if column.get("hashed")
                     else [f"{f}={level}" for level in column["levels"]])
            names += slots + [f"{f}:other", f"{f}:missing"]
        return names

    def _slots(self, column: dict[str, Any]) -> dict[str, int]:
        from atoll import tables

        if column.get("hashed"):
            return {level: tables.bucket(level) for level in column["levels"]}
        return {level: i for i, level in enumerate(column["levels"])}

    # ---- encoding
    def transform_features(self, x) -> np.ndarray:
        """Rows of raw feature values (a float array, an object array of numbers, words and None, or a pandas
        frame of the features) → float32 ``[n, input_dim]``."""
        return self.transform_with_unseen(x)[0]

    def transform_with_unseen(self, x) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`transform_features`, and a bool ``[n, features]`` mask of the categorical values it answered
        as ``other`` because training never kept that level (None when no feature is categorical)."""
        import pandas as pd

        from atoll import tables

        if self.plain:
            try:
                values = np.asarray(x.to_numpy(dtype=np.float32, na_value=np.nan) if isinstance(x, pd.DataFrame)
                                    else x, dtype=np.float32)
            except (TypeError, ValueError):  # words (refused for numeric features before this) or None
                values = np.stack([tables.numbers_of(self._column(x, j)) for j in range(len(self.features))],
                                  axis=1).astype(np.float32) if len(x) else np.zeros((0, len(self.features)), np.float32)
            mean = np.asarray(self.mean, dtype=np.float32)
            gaps = np.isnan(values)
            if gaps.any():
                values = np.where(gaps, mean, values)
            # Written row-major whatever x's layout (pandas hands columns): what torch and ONNX Runtime take, with no
            # extra copy; then scaled in place. One new array, two passes.
            centred = np.empty(values.shape, dtype=np.float32)
            np.subtract(values, mean, out=centred)
            centred *= 1 / np.asarray(self.std, dtype=np.float32)
            return centred, None
        n = len(x)
        out = np.zeros((n, self.input_dim), dtype=np.float32)
        unseen = np.zeros((n, len(self.features)), dtype=bool)
        at = 0
        rows = np.arange(n)
        for j, column in enumerate(self._encoders()):
            values = self._column(x, j)
            if column["kind"] == tables.NUMERIC:
                v = tables.numbers_of(values)
                gaps = np.isnan(v)
                v = np.where(gaps, self.mean[j], v)
                out[:, at] = (v - self.mean[j]) / self.std[j]
                if column.get("indicator"):
                    out[:, at + 1] = gaps
            else:
                keys = tables.keys_of(values, lower=bool(column.get("bool")))
                width = self.width(column)
                slots = self._slots(column)
                index = np.fromiter((width - 1 if k is None else slots.get(k, width - 2) for k in keys),
                                    dtype=np.int64, count=n)
                unseen[:, j] = np.fromiter((k is not None and k not in slots for k in keys), dtype=bool, count=n)
                out[rows, at + index] = 1.0
            at += self.width(column)
        return out, unseen

    def _column(self, x, j: int):
        import pandas as pd

        if isinstance(x, pd.DataFrame):
            return x[self.features[j]]
        return (x if isinstance(x, np.ndarray) else np.asarray(x, dtype=object))[:, j]

    def encode_labels(self, y: np.ndarray) -> np.ndarray:
        if self.target_mean is not None:
            return ((np.asarray(y, dtype=np.float64) - self.target_mean) / self.target_std).astype(np.float32)
        return encode_classes(self.classes, y)

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """``map_batches`` transform: a pandas batch → ``{"x": float32 [n, d], "y": int64 or float32 [n]}``.

        Rows without a label are left out (fitting counted them), and so are a classifier's rows of a class
        the training split never had (a class seen only in validation: the model has no output for it)."""
        keep = batch[self.label].notna()
        if self.target_mean is None:
            keep &= batch[self.label].isin(self.classes)
        if not keep.all():
            batch = batch[keep]
        x = self.transform_features(batch[self.features] if not self.plain else batch[self.features].to_numpy())
        return {"x": x, "y": self.encode_labels(batch[self.label].to_numpy())}


def _class_order(value: Any) -> tuple[str, Any]:
    return str(type(value)), value


def encoders(stats: dict[str, Any], features: list[str], kinds: dict[str, str],
             bools: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    """Each feature's encoding (:attr:`Preprocessor.columns`), and the numeric features' means and spreads
    (0 and 1 for categorical ones), from the training split's merged statistics."""
    from atoll import tables

    columns, means, stds = [], [], []
    for f in features:
        col = stats["columns"][f]
        if kinds.get(f, tables.NUMERIC) == tables.NUMERIC:
            std = math.sqrt(col["m2"] / col["n"]) if col["n"] else 0.0
            means.append(col["mean"] if col["n"] else 0.0)
            # A constant feature has std 0: divide by 1 instead, so it becomes 0 rather than NaN.
            stds.append(1.0 if not col["n"] or col["min"] == col["max"] or std < 1e-8 else std)
            columns.append({"name": f, "kind": tables.NUMERIC, "indicator": col["missing"] > 0,
                            "min": col["min"], "max": col["max"]})
            continue
        kept = sorted((k for k, c in col["counts"].items() if c >= tables.RARE_ROWS),
                      key=lambda k: (-col["counts"][k], k))
        means.append(0.0)
        stds.append(1.0)
        columns.append({"name": f, "kind": tables.CATEGORICAL, "levels": kept,
                        "hashed": len(kept) > tables.MAX_ONE_HOT, "bool": f in bools,
                        "pooled": sum(c for k, c in col["counts"].items() if c < tables.RARE_ROWS)})
    return columns, means, stds


def fit_preprocessor(train_ds, plan: DatasetPlan, *, regression: bool = False) -> Preprocessor:
    """Fit the features' encoding and the label classes (or, for ``regression``, the target's mean and
    spread) on the training split, in one streaming pass (:class:`atoll.tables.BatchStats`); record the
    split's profile and the rows left out for want of a label in ``report``.

    Raises:
        DataError: an empty training split, or no labelled row in it.
    """
    import json as _json

    from atoll import tables

    kinds = plan.kinds or {f: tables.NUMERIC for f in plan.features}
    bools = tuple(f for f in plan.features if plan.types.get(f) == "bool" and kinds[f] == tables.CATEGORICAL)
    stats_fn = tables.BatchStats(plan.features, kinds, plan.label, regression=regression, bools=bools)
    parts = [_json.loads(p["part"]) for p in train_ds.map_batches(stats_fn, batch_format="pandas").take_all()]
    stats = tables.merge_stats(parts)
    if stats["rows"] == 0:
        raise DataError(f"dataset {plan.uri}: the training split is empty; add rows or lower "
                        f"dataset.validation_fraction.")
    if stats["rows"] == stats["unlabelled"]:
        raise DataError(f"dataset {plan.uri}: no row of the training split has a label ({plan.label!r} is empty "
                        f"in all {stats['rows']}); check dataset.label.")
    columns, mean, std = encoders(stats, plan.features, kinds, bools)
    classes = [] if regression else sorted((v for v, _ in stats["label"]), key=_class_order)
    report = {"training_rows": stats["rows"], "unlabelled_rows": stats["unlabelled"],
              "profile": tables.profile(stats, kinds, plan.label, plan.types, regression)}
    pre = Preprocessor(features=plan.features, label=plan.label, mean=mean, std=std, classes=classes,
                       columns=columns, report=report)
    if regression:
        y = stats["label"]
        pre.target_mean = float(y["mean"])
        pre.target_std = float(math.sqrt(y["m2"] / y["n"]) if y["n"] else 0.0) or 1.0
    return pre


class _ValidationCounts:
    """``map_batches`` callable: a validation batch's rows, rows without a label, and (for classes) its class counts."""

    def __init__(self, label: str, classes: bool):
        self.label, self.classes = label, classes

    def __call__(self, batch):
        import pandas as pd

        y = batch[self.label]
        counts = y[y.notna()].value_counts() if self.classes else pd.Series(dtype=object)
        return pd.DataFrame({"rows": [len(y)], "unlabelled": [int(y.isna().sum())],
                             "counts": [json.dumps([[_label(v), int(c)] for v, c in counts.items()])]})


def _label(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check_validation(val_ds, pre: Preprocessor) -> dict[str, Any]:
    """Count the validation split's rows that training leaves out (no label; a class the training split never
    had), record them in ``pre.report`` and return them. Small classes and classes only in validation are
    reported, never a failure: the transform simply leaves those rows out."""
    parts = val_ds.map_batches(_ValidationCounts(pre.label, pre.target_mean is None), batch_format="pandas").take_all()
    unseen: dict[str, int] = {}
    known = set(pre.classes)
    for p in parts:
        for v, c in json.loads(p["counts"]):
            if v not in known:
                unseen[str(v)] = unseen.get(str(v), 0) + c
    found = {"validation_rows": int(sum(p["rows"] for p in parts)),
             "validation_unlabelled_rows": int(sum(p["unlabelled"] for p in parts)),
             "validation_only_classes": unseen}
    pre.report = {**(pre.report or {}), **found}
    return found


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



def profile_path(uri: str, label: str | None = None, *, fmt: str = "auto", exclude: list[str] | None = None,
                 categorical: list[str] | None = None, numeric: list[str] | None = None,
                 label_required: bool = True) -> dict[str, Any]:
    """A dataset's profile, read here in one streaming pass with pyarrow (no cluster): per column its inferred
    kind, missing share, levels or range and warnings (:func:`atoll.tables.profile`); the label's classes
    (its values, or its range when it is a floating-point column). ``label_required``: a ``label`` the table lacks
    is an error (else the table is profiled without one).

    Raises:
        DataError: a missing dataset, or a label or listed column it does not have.
    """
    import pyarrow.dataset as pads

    from atoll import tables

    _files(uri)
    fmt = detect_format(uri, fmt)
    columns, rows = read_schema(uri, fmt)
    if label is not None and label not in columns and not label_required:
        label = None  # no such column: a table profiled without a label
    if label is not None and label not in columns:
        raise DataError(f"dataset {uri}: no column {label!r} to profile as the label; columns are "
                        f"{', '.join(columns)}.")
    for field, names in (("--categorical", categorical), ("--numeric", numeric), ("--exclude", exclude)):
        _unknown(list(names or []), columns, field, uri)
    features = [c for c in columns if c != label and c not in (exclude or [])]
    kinds = {f: tables.CATEGORICAL if f in (categorical or []) else tables.NUMERIC if f in (numeric or [])
             else tables.arrow_kind(columns[f]) for f in features}
    usable = [f for f in features if kinds[f] is not None]
    regression = label is not None and columns[label].startswith(("float", "double", "halffloat", "decimal"))
    bools = tuple(f for f in usable if columns[f] == "bool" and kinds[f] == tables.CATEGORICAL)
    fs, path = _filesystem(uri)
    parts = [tables.batch_stats(batch.to_pandas(), usable, kinds, label, regression=regression, bools=bools)
             for batch in pads.dataset(path, filesystem=fs, format=file_format(fmt)).to_batches(
                 columns=usable + ([label] if label else []))]
    stats = tables.merge_stats(parts)
    lines = tables.profile(stats, kinds, label, columns, regression)
    for f in features:
        if kinds[f] is None:
            lines.insert(features.index(f), {"column": f, "kind": "unsupported", "type": columns[f], "missing": None,
                                             "warnings": [f"{columns[f]}: neither numbers nor words; exclude it"]})
    return {"uri": uri, "format": fmt, "rows": stats["rows"], "label": label, "columns": lines}
