"""Data checks, preprocessing, the training spec and the scaling policy: no Ray needed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from atoll import data, events, models, tables, train
from atoll.config import apply_overrides, load_file, load_model
from atoll.errors import ConfigError, DataError
from atoll.specs import TrainSpec, check_name
from atoll.train import scaling
from atoll.train.run import default_run_name
from conftest import REPO


@pytest.fixture()
def table(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(5, 2, 200), "b": rng.normal(-1, 0.5, 200), "const": 1.0,
                          "name": ["x"] * 200, "label": rng.choice(["cat", "dog"], 200)})
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    frame.to_csv(tmp_path / "t.csv", index=False)
    return path, frame


def test_plan_accepts_numeric_features_and_fingerprints(table):
    path, _ = table
    plan = data.plan(str(path), "auto", ["a", "b"], "label")
    assert plan.format == "parquet" and plan.rows == 200 and plan.features == ["a", "b"]
    assert plan.fingerprint == data.fingerprint(str(path)) and plan.fingerprint.startswith("sha256:")
    assert data.detect_format(str(path.with_suffix(".csv"))) == "csv"


@pytest.mark.parametrize("features,label,message", [
    (["a"], "species", "label column 'species' does not exist"),
    (["a", "nope"], "label", "feature column(s) nope do not exist"),
    (["a", "label"], "label", "is also listed as a feature"),
    (["a", "name"], "label", "dataset.categorical names column(s) nmae that do not exist (did you mean 'name'?)"),
])
def test_plan_rejects_bad_columns(table, features, label, message):
    with pytest.raises(DataError) as err:
        data.plan(str(table[0]), "auto", features, label, categorical=["nmae"] if "nmae" in message else None)
    assert message in str(err.value)


def test_plan_rejects_missing_and_empty(tmp_path, table):
    with pytest.raises(DataError, match="not found.*dataset.path"):
        data.plan(str(tmp_path / "missing.parquet"), "auto", None, "label")
    table[1].iloc[:0].to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="empty"):
        data.plan(str(tmp_path / "empty.parquet"), "auto", ["a"], "label")


def test_split_is_deterministic_disjoint_and_complete(table):
    _, frame = table
    cols = ["a", "b", "label"]
    train_part = data.SplitFilter(cols, 0.25, "train")(frame)
    val_part = data.SplitFilter(cols, 0.25, "validation")(frame)
    assert len(train_part) + len(val_part) == len(frame)
    assert set(train_part.index).isdisjoint(val_part.index)
    assert 20 < len(val_part) < 80
    # Same rows in the same split in any batch order (it hashes contents, not positions).
    again = data.SplitFilter(cols, 0.25, "validation")(frame.iloc[::-1])
    assert sorted(again.index) == sorted(val_part.index)
    other_seed = data.SplitFilter(cols, 0.25, "validation", salt=1)(frame)
    assert sorted(other_seed.index) != sorted(val_part.index)


def test_preprocessor_fits_on_train_and_round_trips(table):
    _, frame = table
    kinds = {"a": "numeric", "b": "numeric", "const": "numeric"}
    parts = [tables.BatchStats(["a", "b", "const"], kinds, "label")(frame.iloc[i:i + 50]) for i in range(0, 200, 50)]

    class FakeDs:  # the aggregation's only contract: map_batches(fn).take_all()
        def map_batches(self, fn, batch_format):
            return self

        def take_all(self):
            return [p.iloc[0].to_dict() for p in parts]

    plan = data.DatasetPlan("x", "parquet", ["a", "b", "const"], "label", 200, "fp")
    pre = data.fit_preprocessor(FakeDs(), plan)
    assert np.allclose(pre.mean, frame[["a", "b", "const"]].mean().to_numpy())
    assert np.allclose(pre.std[:2], frame[["a", "b"]].std(ddof=0).to_numpy())
    assert pre.std[2] == 1.0  # constant feature: no division by zero
    assert pre.classes == ["cat", "dog"]
    out = pre(frame)
    assert out["x"].dtype == np.float32 and out["x"].shape == (200, 3)
    assert abs(out["x"][:, 0].mean()) < 1e-5 and set(out["y"].tolist()) == {0, 1}
    assert data.Preprocessor.from_dict(pre.to_dict()) == pre
    with pytest.raises(DataError, match="not seen"):
        pre.encode_labels(np.array(["bird"]))
    columns = np.asfortranarray(frame[["a", "b", "const"]].to_numpy(dtype=np.float64))  # as pandas hands them
    x = pre.transform_features(columns)
    assert x.flags.c_contiguous and x.dtype == np.float32  # what the runtimes take, no copy left to make
    np.testing.assert_allclose(x, (columns - pre.mean) / pre.std, rtol=1e-5, atol=1e-6)


def test_demo_dataset_is_real_digits(tmp_path):
    paths = data.prepare_demo(str(tmp_path))
    train_df, hold = pd.read_parquet(paths["train"]), pd.read_parquet(paths["holdout"])
    assert len(train_df) + len(hold) == 1797 and len(hold) == 180
    assert train_df.shape[1] == 65 and sorted(train_df.label.unique()) == list(range(10))
    assert data.prepare_demo(str(tmp_path)) == paths  # exported once


def test_train_spec_demo_and_overrides():
    spec = load_file(TrainSpec, REPO / "jobs/configs/train.yaml", ["epochs=3", "optimizer.lr=1e-2",
                                                                   "model.params.hidden=[32]"])
    assert spec.name == "digits" and spec.epochs == 3 and spec.optimizer.lr == 0.01
    assert spec.model.params["hidden"] == [32]


@pytest.mark.parametrize("overrides,message", [
    (["epoch=3"], "epoch: unknown key; did you mean 'epochs'?"),
    (["optimizer.lrr=0.1"], "optimizer.lrr: unknown key; did you mean 'lr'?"),
    (["epochs=many"], "epochs: Input should be a valid integer"),
    (["num_workers=0"], "num_workers: Input should be greater than or equal to 1"),
    (["optimizer.name=adagrad"], "optimizer.name:"),
])
def test_train_spec_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_file(TrainSpec, REPO / "jobs/configs/train.yaml", overrides)
    assert message in str(err.value)


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["epochs"])


def _spec(**kw) -> TrainSpec:
    return load_model(TrainSpec, {"name": "m", "dataset": {"path": "x"}, **kw})


def test_scaling_policy_cpu_gpu_and_feasibility():
    cpu = train.choose_scaling(_spec(num_workers=2), cluster_cpus=4, cluster_gpus=0)
    assert (cpu.use_gpu, cpu.backend, cpu.precision) == (False, "gloo", "fp32")
    gpu = train.choose_scaling(_spec(num_workers=4), cluster_cpus=32, cluster_gpus=8)
    assert (gpu.use_gpu, gpu.backend, gpu.precision) == (True, "nccl", "bf16")
    assert gpu.resources_per_worker == {"CPU": 1, "GPU": 1}
    # Issue 32.5: a GPU node type the cluster could add is no reason for `auto` to rent one; `true` may.
    assert not train.choose_scaling(_spec(), cluster_cpus=4, cluster_gpus=0, max_gpus=2).use_gpu
    assert train.choose_scaling(_spec(use_gpu=True), cluster_cpus=4, cluster_gpus=0, max_gpus=2).use_gpu
    assert not train.choose_scaling(_spec(use_gpu=False), cluster_cpus=4, cluster_gpus=8).use_gpu
    with pytest.raises(ConfigError, match="no GPU"):
        train.choose_scaling(_spec(use_gpu=True), cluster_cpus=4, cluster_gpus=0)
    with pytest.raises(ConfigError, match="num_workers: 8 workers x 1 CPU need 8 CPUs; the cluster can hold at most 4"):
        train.choose_scaling(_spec(num_workers=8), cluster_cpus=4, cluster_gpus=0)
    with pytest.raises(ConfigError, match="need 3 GPUs"):
        train.choose_scaling(_spec(num_workers=3), cluster_cpus=32, cluster_gpus=2)


def test_a_gpu_worker_without_cuda_or_nccl_is_one_line_before_any_process_group():
    assert scaling.gpu_worker_problem(True, True, "2.13.0+cu128") is None
    for cuda, nccl, says in ((False, False, "sees no CUDA device"), (True, False, "has a torch without NCCL")):
        problem = scaling.gpu_worker_problem(cuda, nccl, "2.13.0+cpu")
        assert says in problem and "torch 2.13.0+cpu" in problem and "use_gpu: false" in problem
        assert "\n" not in problem


def test_models_build_and_user_import_paths():
    mlp = models.build("mlp", 64, 10, {"hidden": [16]})
    cnn = models.build("cnn", 64, 10, {})
    x = torch.randn(5, 64)
    assert mlp(x).shape == (5, 10) and cnn(x).shape == (5, 10)
    user = models.build("atoll.models:MLP", 8, 3, {})  # any importable builder works
    assert user(torch.randn(2, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="cannot import 'nopkg.models'"):
        models.resolve("nopkg.models:build")
    with pytest.raises(ConfigError, match="neither a built-in"):
        models.resolve("transformer")
    with pytest.raises(ConfigError, match="not a square image"):
        models.build("cnn", 10, 2, {})


def test_event_lines_survive_ray_log_prefixes():
    line = '(RayTrainWorker pid=1) ATOLL_EVENT {"event": "epoch", "epoch": 2}\nnoise\nATOLL_EVENT {bad'
    assert events.parse_events(line) == [{"event": "epoch", "epoch": 2}]


def test_an_event_forwarded_twice_is_read_once(capsys):
    events.emit("epoch", epoch=0)
    events.emit("epoch", epoch=0)  # the same figures again: a second event, not a copy
    printed = capsys.readouterr().out
    doubled = "".join(f"(RayTrainWorker pid=7) {line}\n{line}\n" for line in printed.splitlines())
    seen: set[str] = set()
    first = events.parse_events(doubled, seen)
    assert [e["epoch"] for e in first] == [0, 0] and len({e["id"] for e in first}) == 2
    assert events.parse_events(doubled, seen) == []  # a later chunk repeating them adds nothing
    assert len(events.parse_events(doubled)) == 4  # without ``seen``: every line, as before


def test_run_names_are_never_silently_reused(tmp_path):
    (tmp_path / "runs" / "old").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists.*--resume old"):
        train.check_run_name(str(tmp_path), "old", resume=False)
    train.check_run_name(str(tmp_path), "old", resume=True)
    with pytest.raises(ConfigError, match="no such run"):
        train.check_run_name(str(tmp_path), "new", resume=True)


@pytest.mark.parametrize("bad", ["../registry/digits", "/tmp/elsewhere", "a/b", "..", ".hidden", "-x", "x\n",
                                 "", "n" * 65])
def test_a_run_name_that_is_not_one_folder_under_runs_is_refused(tmp_path, bad):
    # The target exists, so before the check `--resume ../registry/digits` "resumed" the registry's folder.
    (tmp_path / "registry" / "digits").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    for resume in (False, True):
        with pytest.raises(ConfigError, match=r"^invalid run name .*: use 1 to 64 letters, digits"):
            train.check_run_name(str(tmp_path), bad, resume=resume)
    train.check_run_name(str(tmp_path), "digits-20260101-120000-ab12", resume=False)


def test_the_training_job_refuses_a_bad_run_name_in_one_line_before_connecting(tmp_path):
    """`python -m atoll.train` (what `ray job submit` can run too) checks the name itself: no cluster needed."""
    env = {**os.environ, "ATOLL_STORAGE": str(tmp_path), "RAY_ADDRESS": "127.0.0.1:1"}  # nothing listens there
    for flag in ("--run-name", "--resume"):
        out = subprocess.run([sys.executable, "-m", "atoll.train", "-c", str(REPO / "jobs/configs/train.yaml"),
                              flag, "../registry/x"], capture_output=True, text=True, timeout=120, env=env,
                             cwd=REPO, check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Traceback" not in out.stderr and "invalid run name '../registry/x'" in out.stderr
    assert not (tmp_path / "registry").exists()


def test_a_long_model_name_still_gets_a_valid_default_run_name():
    name = default_run_name(_spec(name="m" * 64))
    assert check_name(name, "run name") == name and name.startswith("m" * 42)


def test_fingerprint_is_of_the_bytes_not_the_path_or_mtime(tmp_path, monkeypatch):
    src = tmp_path / "a" / "rows.csv"
    src.parent.mkdir()
    src.write_text("x,label\n1,0\n2,1\n")
    copy = tmp_path / "b" / "other-name.csv"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    os.utime(copy, (1e9, 1e9))
    same = data.fingerprint(str(src))
    assert same.startswith("sha256:") and data.fingerprint(str(copy)) == same  # elsewhere, older: same data
    copy.write_text("x,label\n1,0\n2,2\n")  # one byte changed
    os.utime(copy, (1e9, 1e9))
    assert data.fingerprint(str(copy)) != same
    # Past the size cap: names, sizes and mtimes, and the id says so.
    monkeypatch.setattr(data, "FINGERPRINT_CONTENT_BYTES", 0)
    by_stat = data.fingerprint(str(copy))
    os.utime(copy, (2e9, 2e9))
    assert by_stat.startswith("stat:") and data.fingerprint(str(copy)) != by_stat


class _Shard:
    """What Ray Train hands a worker, as far as MemoryShard reads it: ``iter_torch_batches``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.passes = x, y, 0

    def iter_torch_batches(self, batch_size, dtypes):
        self.passes += 1
        for start in range(0, len(self.y), batch_size):
            yield {"x": self.x[start:start + batch_size].to(dtypes["x"]),
                   "y": self.y[start:start + batch_size].to(dtypes["y"])}


def test_a_memory_shard_reads_once_and_each_epoch_sees_every_row_once_in_a_seeded_order():
    from atoll.train.loop import MemoryShard

    x = torch.arange(10_000, dtype=torch.float64).reshape(5000, 2)
    shard = _Shard(x, torch.arange(5000))
    held = MemoryShard(shard, {"x": torch.float32, "y": torch.int64})
    orders = {}
    for seed in (1, 1, 2, None):
        batches = list(held.batches(64, torch.device("cpu"), shuffle_seed=seed))
        assert [len(b[1]) for b in batches] == [64] * 78 + [8]
        assert all(b[0].dtype == torch.float32 and b[1].dtype == torch.int64 for b in batches)
        ys = torch.cat([b[1] for b in batches])
        assert sorted(ys.tolist()) == list(range(5000))  # every row once
        assert torch.equal(torch.cat([b[0] for b in batches])[:, 0], 2 * ys.float())  # rows stay whole
        orders.setdefault(seed, []).append(ys.tolist())
    assert shard.passes == 1  # read from Ray Data once, not once per epoch
    assert orders[1][0] == orders[1][1] != orders[2][0]
    assert orders[None][0] == list(range(5000))  # validation: in order

    empty = MemoryShard(_Shard(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)),
                        {"x": torch.float32, "y": torch.int64})
    assert list(empty.batches(64, torch.device("cpu"), shuffle_seed=0)) == []


def test_small_data_is_held_in_memory_and_a_csv_is_judged_by_its_size(table, tmp_path):
    path, frame = table
    parquet = data.plan(str(path), "auto", ["a", "b"], "label")
    assert data.should_cache(parquet) and not data.should_cache(parquet, False)
    csv = data.plan(str(tmp_path / "t.csv"), "auto", ["a", "b"], "label")
    assert csv.rows is None and data.should_cache(csv)
    big = dataclasses.replace(parquet, rows=10**9)
    assert not data.should_cache(big) and data.should_cache(big, True)


@pytest.mark.parametrize("name", ["train", "regression", "text", "image", "keras"])
def test_every_task_and_framework_takes_the_same_scaling_policy(name):
    """The Transformers, Keras and image specs as shipped: GPU workers with NCCL and bf16 autocast when the
    cluster has GPUs, CPU workers with gloo and fp32 when it has none."""
    spec = load_file(TrainSpec, REPO / "jobs" / "configs" / f"{name}.yaml")
    gpu = train.choose_scaling(spec, cluster_cpus=16, cluster_gpus=spec.num_workers)
    assert (gpu.use_gpu, gpu.backend, gpu.precision) == (True, "nccl", "bf16")
    assert gpu.resources_per_worker == {"CPU": spec.cpus_per_worker, "GPU": spec.gpus_per_worker}
    cpu = train.choose_scaling(spec, cluster_cpus=4, cluster_gpus=0)
    assert (cpu.use_gpu, cpu.backend, cpu.precision, cpu.num_workers) == (False, "gloo", "fp32", 2)
