"""Batch prediction with Ray Data: a registered version over a whole Parquet or CSV dataset (``atoll predict``).

The job reads the input with Ray Data, runs the version in an actor pool sized from the cluster (one replica
of the model per actor, loaded once; GPU actors when the cluster has GPUs), and writes one Parquet file:
the input's key columns (every column that is not a model input), ``prediction`` and, for classifiers,
``probabilities`` (one list per row, in the order of the version's classes). Its rows follow the input's (the
files by name, each file's rows as stored), whichever actor finishes first: Ray Data's order guarantee. Everything that can be wrong
with the request (an unknown version, a missing input, missing or mistyped columns, an output that
exists) is refused with one line before any work starts, on the client and again in the job.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from atoll import data, filesystems
from atoll.errors import ConfigError, DataError

_KINDS = {"table": (data.NUMERIC_PREFIXES, "numeric"), "text": (data.STRING_PREFIXES, "a string"),
          "image": (data.BINARY_PREFIXES, "binary (encoded images)"),
          "prompt": ((*data.STRING_PREFIXES, "list", "large_list"), "text (a prompt) or a list of chat turns")}
GENERATION = "text-generation"
#: new tokens per completion where `atoll predict --max-tokens` names none
DEFAULT_NEW_TOKENS = 64


def prompt_columns(columns: dict[str, str], input_uri: str) -> list[str]:
    """The column a language model completes: ``messages`` (chats), else ``prompt``, else the one text column.

    Raises:
        DataError: none of them, naming the columns there are.
    """
    if "messages" in columns:
        return ["messages"]
    if "prompt" in columns:
        return ["prompt"]
    texts = [c for c, kind in columns.items() if kind.startswith(data.STRING_PREFIXES)]
    if len(texts) == 1:
        return texts
    raise DataError(f"--input {input_uri}: a language model completes a `prompt` column (texts) or a `messages` "
                    f"column (chats); its columns are {', '.join(list(columns)[:8])}. Rename the prompt column.")


def resolve_local(path: str) -> str:
    """A local path as an absolute one (the job runs elsewhere on this machine's disk); a URI as it is."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check(schema: dict[str, Any], input_uri: str, output_uri: str | None, *, overwrite: bool = False) -> dict[str, Any]:
    """The input's format, rows, the columns kept beside the predictions and (Parquet) every file's footer
    (:func:`atoll.data.parquet_footers`), after checking that the input holds the version's inputs with the
    right types and that the output may be written (``output_uri`` None: no output).

    Raises:
        DataError: a missing input, a missing or mistyped column (naming it and the fix).
        ConfigError: the output exists (without ``overwrite``) or is not a Parquet file name.
    """
    if data.is_missing(input_uri):
        raise DataError(f"--input {input_uri}: not found; name a Parquet or CSV file or folder (a local path or a URI).")
    fmt = data.detect_format(input_uri)
    columns, rows = data.read_schema(input_uri, fmt)
    features = prompt_columns(columns, input_uri) if schema.get("task") == GENERATION else list(schema.get("features") or [])
    missing = [f for f in features if f not in columns]
    if missing:
        raise DataError(f"--input {input_uri}: no column {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; "
                        f"this model reads {', '.join(features[:5])}{' …' if len(features) > 5 else ''} "
                        f"({len(features)} columns). Its columns are {', '.join(list(columns)[:8])}.")
    prefixes, what = _KINDS.get(schema.get("input_kind") or "table", _KINDS["table"])
    kinds = {c["name"]: c["kind"] for c in schema.get("columns") or []}
    if kinds and (schema.get("input_kind") or "table") == "table":  # a table of numbers and words, with gaps
        from atoll import tables

        bad = [f"{f} ({columns[f]})" for f in features
               if (tables.arrow_kind(columns[f]) is None and kinds.get(f) != "categorical")
               or (kinds.get(f) == "numeric" and tables.arrow_kind(columns[f]) != "numeric" and columns[f] != "bool")]
        what = "numbers (the version's numeric features) or words and numbers (its categorical ones)"
    else:
        bad = [f"{f} ({columns[f]})" for f in features if not columns[f].startswith(prefixes)]
    if bad:
        raise DataError(f"--input {input_uri}: column(s) {', '.join(bad[:5])} must be {what} for this model.")
    footers = data.parquet_footers(input_uri) if fmt == "parquet" else None
    for path, footer in footers or []:  # the schema above is one file's: the actors read every file as it is
        lacking = [f for f in features if f not in footer.schema.to_arrow_schema().names]
        if lacking:
            raise DataError(f"--input {input_uri}: {path} has no column {', '.join(lacking[:5])}; every file of "
                            f"the input must hold the model's {len(features)} input columns.")
    if output_uri is None:  # nothing to write (an evaluation keeps its predictions to itself)
        return {"format": fmt, "rows": rows, "keys": [c for c in columns if c not in features], "footers": footers}
    if not output_uri.endswith(".parquet"):
        raise ConfigError(f"--output {output_uri}: name a Parquet file (….parquet).")
    fs, path = filesystems.resolve(output_uri, DataError)
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.NotFound and not overwrite:
        raise ConfigError(f"--output {output_uri} exists; choose a new name or pass --overwrite.")
    return {"format": fmt, "rows": rows, "keys": [c for c in columns if c not in features], "footers": footers}


def pool_size(cpus: float, gpus: float, *, read_here: bool = False) -> tuple[int, bool]:
    """(actors, on GPU) from what the cluster has free: one actor per GPU when there are GPUs, else one per
    free CPU; but one when Ray Data's read tasks need a CPU (a pool holding every CPU would starve its own
    input), that is unless the input was read here (``read_here``)."""
    if gpus >= 1:
        return int(gpus), True
    return max(1, int(cpus) - (0 if read_here else 1)), False


class Scorer:
    """One actor of the pool: the version loaded once (by ONNX Runtime or torch,
    :func:`atoll.serving.predictor.choose_runtime`), then Arrow batch after Arrow batch of input rows → a table of the key columns, predictions and probabilities
    built from arrays (a million rows never become Python lists)."""

    def __init__(self, storage: str, ref: str, keys: list[str], model_types: list[str] | None = None,
                 runtime: str = "auto", device: str | None = None, max_tokens: int | None = None) -> None:
        self.keys = keys
        if max_tokens is not None:  # a language model: completions, not predictions
            self.predictor, self.completions = None, Completions(storage, ref, device=device, max_tokens=max_tokens)
            return
        from atoll.serving.predictor import Predictor

        self.predictor = Predictor(storage, ref, device=device, model_types=model_types, runtime=runtime)
        self.completions = None

    def __call__(self, batch):
        return self.score(batch)

    def score(self, batch):
        """Input rows (an Arrow table or record batch) → the key columns, ``prediction``, ``probabilities`` (a
        language model's: ``completion``, ``completion_tokens``, ``finish_reason``)."""
        import pyarrow as pa

        if self.completions is not None:
            return self.completions.table(batch, self.keys)
        task, schema = self.predictor.task, self.predictor.schema
        inputs = task.frame_inputs(batch.select(schema["features"]).to_pandas(), schema)
        predictions, probabilities = self.predictor.predict_arrays(inputs)
        columns = {k: batch.column(k) for k in self.keys}
        columns["prediction"] = pa.array(predictions)
        if probabilities is not None:
            columns["probabilities"] = pa.FixedSizeListArray.from_arrays(pa.array(probabilities.ravel()),
                                                                         probabilities.shape[1])
        return pa.table(columns)


class Completions:
    """A language model's version in an actor: its Hugging Face folder copied from the registry (sha256 checked)
    and run by :class:`atoll.serving.generation.Generator` (Transformers' ``generate``, the batch's prompts
    together), greedy: the same prompt always gets the same completion."""

    def __init__(self, storage: str, ref: str, *, device: str | None, max_tokens: int) -> None:
        import tempfile

        from atoll import registry, tasks
        from atoll.serving.generation import Generator

        reg = registry.Registry(storage)
        version = reg.get(ref)
        self.task, self.schema, self.max_tokens = tasks.get(GENERATION), version.input_schema or {}, max_tokens
        self._folder = tempfile.TemporaryDirectory(prefix="atoll-lm-")  # removed with the actor
        local = reg.local_copy(version, self._folder.name)
        self.generator = Generator(Path(local) / "hf", device=device, context_length=self.schema.get("context_length"))

    def table(self, batch, keys: list[str]):
        import pyarrow as pa

        columns = list(batch.schema.names)
        chosen = prompt_columns({c: str(batch.schema.field(c).type) for c in columns}, "the input")
        inputs = self.task.frame_inputs(batch.select(chosen).to_pandas(), self.schema)
        prompts = [self.generator.chat_prompt(p) if isinstance(p, list) else p for p in inputs]
        done = self.generator.complete(prompts, max_tokens=self.max_tokens, temperature=0.0)
        out = {k: batch.column(k) for k in keys}
        out["completion"] = pa.array([d["text"] for d in done], pa.string())
        out["completion_tokens"] = pa.array([d["completion_tokens"] for d in done], pa.int32())
        out["finish_reason"] = pa.array([d["finish_reason"] for d in done], pa.string())
        return pa.table(out)


class PieceScorer(Scorer):
    """An actor that reads its own input: each item it is handed names a piece of a Parquet input (a run of
    whole batches of one row group, :func:`pieces`), which it reads straight from the file and predicts batch
    by batch. The rows never cross the object store on their way in, and the pool needs no read tasks beside
    it (on 2 cores: no third process, no CPU held back; bench/batch_predict.py)."""

    def __init__(self, storage: str, ref: str, keys: list[str], input_uri: str, batch_rows: int, **kwargs) -> None:
        super().__init__(storage, ref, keys, **kwargs)
        self.fs, _ = filesystems.resolve(input_uri, DataError)  # this process's own credentials, never sent
        self.batch_rows = batch_rows

    def __call__(self, items):
        import pyarrow.parquet as pq

        for piece in items.to_pylist():
            with self.fs.open_input_file(piece["file"]) as f:
                batches = pq.ParquetFile(f).iter_batches(batch_size=self.batch_rows, row_groups=[piece["row_group"]])
                for i, rows in enumerate(batches):  # a row group reads from its start: skip the batches before
                    if i >= piece["first"] + piece["count"]:
                        break
                    if i >= piece["first"]:
                        yield self.score(rows)


def pieces(groups: list[tuple[str, int, int]], batch_rows: int, actors: int) -> list[dict[str, Any]]:
    """The work items of a :class:`PieceScorer` pool: every row group of ``groups``
    (:func:`atoll.data.row_groups`) whole, or, where there are fewer row groups than two per actor, cut into
    runs of whole batches so that no actor idles (each piece of a cut row group reads it from its start: the
    decoding of the batches it skips is the price)."""
    cuts = max(1, -(-2 * actors // max(1, len(groups))))
    items = []
    for file, group, rows in groups:
        batches = max(1, -(-rows // batch_rows))
        runs = min(cuts, batches)  # as even as whole batches allow: 13 in 4 is 4, 3, 3, 3 (not 4, 4, 4, 1)
        first = 0
        for run in range(runs):
            count = batches // runs + (run < batches % runs)
            items.append({"file": file, "row_group": group, "first": first, "count": count})
            first += count
    return items


def run(ref: str, input_uri: str, output_uri: str, *, storage: str, batch_rows: int | None = None,
        overwrite: bool = False, runtime: str = "auto", any_order: bool = False, max_tokens: int | None = None,
        on_progress=None) -> dict[str, Any]:
    """Predict ``input_uri`` with version ``ref`` on the connected cluster into ``output_uri`` (one Parquet
    file, written as the pool's batches come back). ``batch_rows``: rows read and answered together (default: the task's,
    :attr:`atoll.tasks.base.Task.batch_rows`). ``runtime``: ``auto`` (ONNX Runtime on CPU where the version has
    its ``model.onnx``, else torch),
    ``torch`` or ``onnx`` (the version's exported file, run by ONNX Runtime). ``any_order``: write pieces as the
    actors finish them instead of in the input's order (bench/batch_predict.py measures what the order costs).
    ``on_progress(rows_done, rows_total)`` after each batch. ``max_tokens``: a language model's new tokens per
    completion (default :data:`DEFAULT_NEW_TOKENS`; its prompts are completed greedily, in the input's order).

    Raises:
        RegistryError / DataError / ConfigError: before any work starts.
    """
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from atoll import registry, tasks
    from atoll.model_types import AllowList
    from atoll.serving.predictor import choose_runtime

    entered = time.perf_counter()
    version = registry.Registry(storage).get(ref)
    schema = version.input_schema or {}
    checked = check(schema, input_uri, output_uri, overwrite=overwrite)
    batch_rows = batch_rows or tasks.get(version.spec.get("task") or schema.get("task")).batch_rows
    model_type = version.spec.get("model", {}).get("type", "mlp")
    allowed = AllowList.from_cluster()
    allowed.check(model_type, version.ref)  # the driver never imports torch: only the actors run the model
    # A Parquet input is read by the actors themselves (PieceScorer); a CSV by Ray Data's reader, or, when small,
    # here (no read tasks then either).
    by_pieces = checked["format"] == "parquet"
    small = by_pieces or data.should_cache(data.DatasetPlan(uri=input_uri, format=checked["format"],
                                                            features=list(schema.get("features") or []),
                                                            label="", rows=None, fingerprint=""))
    free = ray.available_resources()
    actors, on_gpu = pool_size(free.get("CPU", 1), free.get("GPU", 0), read_here=small)
    device = "cuda" if on_gpu else "cpu"
    # auto: ONNX Runtime on CPU where the version has its model.onnx. Measured on one thread: the digits MLP 0.41 s a
    # million rows against torch's 0.49 s; the small BERT (by length buckets) 5,000-5,500 texts/s against torch's
    # 5,300-6,500, with an actor ready in 0.07 s instead of 3.4 s (torch and Transformers never imported).
    runtime = choose_runtime(runtime, version, device)  # refused here, not in an actor
    data.quiet_progress()
    # Pieces come back as actors finish; without the order guarantee the output's rows could not be matched
    # to the input's without an id column. Ray Data holds a piece that finished early until those before it
    # are out (cost: bench/batch_predict.py).
    ray.data.DataContext.get_current().execution_options.preserve_order = not any_order
    started = time.perf_counter()
    # At least two batches per actor, so that no actor idles while another works through a long tail.
    if checked["rows"]:
        batch_rows = max(1, min(batch_rows, -(-checked["rows"] // (2 * actors))))
    scorer_args = {"storage": storage, "ref": version.ref, "keys": checked["keys"],
                   "model_types": list(allowed.patterns), "runtime": runtime, "device": device}
    if schema.get("task") == GENERATION:
        scorer_args["max_tokens"] = max_tokens or DEFAULT_NEW_TOKENS
    if by_pieces:
        items = pieces(data.row_groups(checked["footers"]), batch_rows, actors)
        ds, scorer, per_call = ray.data.from_items(items, override_num_blocks=len(items)), PieceScorer, 1
        scorer_args.update(input_uri=input_uri, batch_rows=batch_rows)
    else:  # a small file is read here in blocks of one batch, which Ray Data hands to the actors as they are
        ds = data.read(input_uri, checked["format"], small=small, block_rows=batch_rows)
        scorer, per_call = Scorer, batch_rows
    # One call in flight per actor: the actor that starts first must not take every piece before the others are up.
    scored = ds.map_batches(scorer, fn_constructor_kwargs=scorer_args, batch_size=per_call, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                            num_cpus=1 if not on_gpu else 0, num_gpus=1 if on_gpu else 0)
    fs, path = filesystems.resolve(output_uri, DataError)
    fs.create_dir(os.path.dirname(path) or ".", recursive=True)
    tmp = f"{path}.{os.getpid()}-{os.urandom(3).hex()}.tmp"  # renamed into place whole: no half-written output
    done, writer, first_batch = 0, None, None
    try:
        with fs.open_output_stream(tmp) as sink:
            for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2):
                table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
                if writer is None:
                    first_batch = time.perf_counter() - started
                    writer = pq.ParquetWriter(sink, table.schema)
                writer.write_table(table)
                done += table.num_rows
                if on_progress:
                    on_progress(done, checked["rows"])
            if writer is None:
                raise DataError(f"--input {input_uri}: no rows to predict.")
            writer.close()
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    seconds = time.perf_counter() - started
    return {"model": version.ref, "input": input_uri, "output": output_uri, "rows": done, "actors": actors,
            "batch_rows": batch_rows,
            "gpu": on_gpu, "runtime": runtime, "ordered": not any_order, "seconds": round(seconds, 2),
            "rows_per_s": round(done / seconds, 1) if seconds else None,
            "keys": checked["keys"],
            # where the job's time went: the version and input checked, the pool's first batch back (actors
            # started, model loaded, first block read), then the rest of the rows streamed and written
            "timings": {"check_s": round(started - entered, 2), "to_first_batch_s": round(first_batch, 2),
                        "stream_s": round(seconds - first_batch, 2)}}
