"""Sweep specs, their checks, the search space in Tune's terms, the trial session and the results table.

No Ray cluster: everything here runs in the test process in a few seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from atoll import config, data, tune
from atoll.config import load_model
from atoll.errors import ConfigError
from atoll.specs import TrainSpec
from atoll.tune import results as sweep_results
from atoll.tune import run as sweep_run
from conftest import REPO

SWEEP = REPO / "jobs/configs/sweep.yaml"


@pytest.fixture(autouse=True)
def _elsewhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a sweep's paths are relative to its own folder, whatever the current one


def _sweep(**fields) -> tune.SweepSpec:
    raw = {"name": "s", "train": "jobs/configs/train.yaml",
           "search_space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}, **fields}
    return load_model(tune.SweepSpec, raw, "sweep.yaml")


def _base(**fields) -> TrainSpec:
    return load_model(TrainSpec, {"name": "m", "dataset": {"path": "x"}, "epochs": 8, **fields})


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return str(err.value)


# ------------------------------------------------------------------------------------------------
# Loading and checking


def test_demo_sweep_loads_with_its_training_spec():
    sweep, base = tune.load_sweep(SWEEP, [])
    assert sweep.name == "digits-sweep" and (sweep.metric, sweep.mode) == ("val_accuracy", "max")
    assert set(sweep.search_space) == {"optimizer.lr", "model.params.hidden", "batch_size"}
    assert sweep.search_space["optimizer.lr"].kind == "loguniform"
    assert (sweep.scheduler.type, sweep.scheduler.max_t, sweep.scheduler.grace_period) == ("successive_halving", None, 1)
    assert base.name == "digits" and base.epochs == 8  # the sweep's overrides reach the training spec
    assert tune.count_trials(sweep) == 6


def test_set_overrides_reach_sweep_and_training_spec():
    sweep, base = tune.load_sweep(SWEEP, ["num_samples=2", "overrides.optimizer.name=sgd", "overrides.epochs=4",
                                          "search_space.optimizer.lr.uniform=[0.001,0.01]"])
    assert sweep.num_samples == 2 and base.optimizer.name == "sgd" and base.epochs == 4
    assert sweep.search_space["optimizer.lr"].kind == "uniform"  # the nested --set form replaces it


def test_nested_sections_mean_dotted_paths():
    sweep = _sweep(search_space={"optimizer": {"lr": {"uniform": [0.1, 0.2]}},
                                 "model": {"params": {"hidden": {"choice": [[8]]}}}},
                   overrides={"optimizer": {"weight_decay": 0.1}})
    assert set(sweep.search_space) == {"optimizer.lr", "model.params.hidden"}
    assert sweep.overrides == {"optimizer.weight_decay": 0.1}


@pytest.mark.parametrize("path,message", [
    ("optimizer.lrr", "search_space.optimizer.lrr: unknown training-spec field; did you mean 'optimizer.lr'?"),
    ("lr", "search_space.lr: unknown training-spec field; did you mean 'optimizer.lr'?"),
    ("model.hiden", "did you mean 'model.params.hiden'?"),
    ("batchsize", "did you mean 'batch_size'?"),
    ("optimizer", "search_space.optimizer: is a section; vary one of its fields: optimizer.name"),
    ("epochs", "search_space.epochs: cannot be varied by a sweep: epochs is the sweep's time budget"),
    ("dataset.path", "the data is read and preprocessed once for all trials"),
    ("num_workers", "set resources_per_trial.workers instead"),
])
def test_unknown_or_fixed_search_fields_are_named_with_the_fix(path, message):
    sweep = _sweep(search_space={path: {"choice": [1]}})
    assert message in _error(tune.check_sweep, sweep, _base(), "sweep.yaml")


def test_model_params_are_free_form():
    assert tune.check_search_path("model.params.hidden") is None
    assert tune.check_search_path("model.params.anything.below") is None
    assert "is a mapping" in tune.check_search_path("model.params")


@pytest.mark.parametrize("dist,message", [
    ({"choice": []}, "search_space.batch_size: choice: empty list; give at least one value"),
    ({"grid": []}, "search_space.batch_size: grid: empty list"),
    ({"loguniform": [0, 0.1]}, "search_space.batch_size: loguniform: bounds must be > 0"),
    ({"loguniform": [-1, 0.1]}, "loguniform: bounds must be > 0"),
    ({"uniform": [0.5, 0.5]}, "search_space.batch_size: uniform: lower bound 0.5 must be below upper bound 0.5"),
    ({"randint": [8, 4]}, "randint: lower bound 8 must be below upper bound 4 (hi is exclusive"),
    ({"uniform": [1, 2, 3]}, "search_space.batch_size.uniform:"),
    ({"choice": [1], "grid": [2]}, "give exactly one of uniform, loguniform, randint, choice, grid"),
    ({"logunifrom": [1, 2]}, "search_space.batch_size.logunifrom: unknown key; did you mean 'loguniform'?"),
    (64, "search_space.batch_size: expected a distribution such as {choice: [32, 64]}"),
])
def test_bad_distributions_name_the_field(dist, message):
    assert message in _error(_sweep, search_space={"batch_size": dist})


def test_unknown_metric_and_wrong_direction():
    assert "metric: the training does not report 'val_acc'; did you mean 'val_accuracy'?" in \
        _error(_sweep, metric="val_acc")
    assert "mode: max on val_loss would pick the worst trial; set mode: min" in \
        _error(_sweep, metric="val_loss", mode="max")
    assert _sweep(metric="val_loss").mode == "min" and _sweep().mode == "max"  # inferred when left out
    assert "search_space: empty" in _error(_sweep, search_space={})
    assert "num_samples" in _error(_sweep, num_samples=0)


@pytest.mark.parametrize("path,values,message", [
    ("batch_size", [32, -4], "search_space.batch_size: choice value -4 gives an invalid training spec "
                             "(batch_size: Input should be greater than or equal to 1"),
    ("optimizer.name", ["adam", "adagrad"], "search_space.optimizer.name: choice value 'adagrad'"),
    ("optimizer.momentum", None, "search_space.optimizer.momentum: uniform value 1.5 gives an invalid"),
])
def test_every_sampled_value_must_give_a_valid_training_spec(path, values, message):
    dist = {"choice": values} if values is not None else {"uniform": [0.5, 1.5]}
    sweep = _sweep(search_space={path: dist})
    assert message in _error(tune.check_sweep, sweep, _base(), "sweep.yaml")


def test_successive_halvings_rungs_are_ashas_milestones_below_max_t():
    from atoll.tune.halving import rungs

    assert rungs(1, 3, 8) == [1, 3] and rungs(1, 2, 8) == [1, 2, 4] and rungs(2, 2, 9) == [2, 4, 8]
    assert rungs(4, 3, 4) == []  # grace_period = max_t: nothing to decide, every trial runs in full
    sweep, _ = tune.load_sweep(SWEEP, ["num_samples=8"])
    scheduler = sweep_run.trial_scheduler(sweep, 8)
    assert sweep.scheduler.type == "successive_halving" and scheduler.rung_epochs == [1, 3]  # the demo's


def test_hyperband_needs_a_max_t_whose_first_rung_is_an_epoch():
    """Ray's HyperBand with max_t 8 and reduction_factor 3 puts its first rung at int(8 / 9) = 0 epochs: a
    bench run stopped nothing (64 of 64 trial-epochs). Refused before submitting; 9 (3 squared) is fine."""
    assert "its first rung would be 0.89 epochs" in \
        _error(tune.check_sweep, _sweep(scheduler={"type": "hyperband", "reduction_factor": 3, "max_t": 8}), _base())
    tune.check_sweep(_sweep(scheduler={"type": "hyperband", "reduction_factor": 3}, overrides={"epochs": 9}),
                     _base(epochs=9))


def test_scheduler_and_algorithm_fit_the_spec():
    assert "scheduler.max_t: 20 exceeds the training spec's epochs (8)" in \
        _error(tune.check_sweep, _sweep(scheduler={"max_t": 20}), _base())
    assert "scheduler.grace_period: 9 exceeds max_t" in \
        _error(tune.check_sweep, _sweep(scheduler={"grace_period": 9}), _base())
    sweep = _sweep(search_space={"optimizer.name": {"grid": ["adam", "sgd"]}}, search={"algorithm": "optuna"})
    assert "grid needs search.algorithm: random" in _error(tune.check_sweep, sweep, _base())


def test_several_problems_are_reported_together():
    sweep = _sweep(search_space={"optimizer.lrr": {"choice": [1]}, "batch_size": {"choice": [0]}})
    message = _error(tune.check_sweep, sweep, _base(), "sweep.yaml")
    assert message.startswith("sweep.yaml: 2 problems:") and "optimizer.lrr" in message and "batch_size" in message


def test_missing_training_spec_is_named(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\ntrain: jobs/configs/nope.yaml\nsearch_space: {batch_size: {choice: [8]}}\n")
    assert "train: jobs/configs/nope.yaml not found" in _error(tune.load_sweep, path)


def test_model_params_values_must_build_the_model():
    sweep = _sweep(search_space={"model.params.hidden": {"choice": [[16], [-4]]}})
    base = _base(model={"type": "mlp", "params": {"hidden": [8]}})
    assert "search_space.model.params.hidden: value [-4] does not build a mlp model" in \
        _error(tune.check_models, sweep, base, 64, 10)
    tune.check_models(_sweep(search_space={"model.params.hidden": {"choice": [[16], [32, 8]]}}), base, 64, 10)


# ------------------------------------------------------------------------------------------------
# Resources


def test_single_worker_trials_train_in_their_own_process():
    plan = tune.check_resources(_sweep(), cluster_cpus=4, cluster_gpus=0)
    assert not plan.nested and plan.trial == {"cpu": 1.0} and plan.max_parallel == 4
    half = tune.check_resources(_sweep(resources_per_trial={"cpus_per_worker": 0.5}), 2, 0)
    assert half.trial == {"cpu": 0.5} and half.max_parallel == 4


def test_nested_trials_count_their_driver_cpu():
    sweep = _sweep(resources_per_trial={"workers": 2, "cpus_per_worker": 0.5})
    plan = tune.check_resources(sweep, cluster_cpus=4, cluster_gpus=0)
    assert plan.nested and plan.trial == {"cpu": 1.0} and plan.cpus_per_trial == 2 and plan.max_parallel == 2


def test_resources_no_node_can_fit_are_refused():
    big = _sweep(resources_per_trial={"cpus_per_worker": 8})
    assert "resources_per_trial.cpus_per_worker: a trial (one process) needs 8 CPUs, but the largest node " \
           "has 4" in _error(tune.check_resources, big, 16, 0, node_cpus=4)
    nested = _sweep(resources_per_trial={"workers": 4, "cpus_per_worker": 1})
    assert "resources_per_trial: a trial needs 5 CPUs (1 for the trial's driver + 4 workers x 1), but the " \
           "cluster has 4" in _error(tune.check_resources, nested, 4, 0)
    gpu = _sweep(resources_per_trial={"gpus_per_worker": 1})
    assert "gpus_per_worker: 1, but the cluster has no GPU" in _error(tune.check_resources, gpu, 4, 0)
    assert "use_gpu: true, but the cluster has no GPU" in \
        _error(tune.check_resources, _sweep(), 4, 0, use_gpu=True)


def test_gpus_default_to_one_per_worker_where_there_are_gpus():
    plan = tune.check_resources(_sweep(), cluster_cpus=8, cluster_gpus=2)
    assert plan.trial == {"cpu": 1.0, "gpu": 1.0} and plan.max_parallel == 2
    assert tune.check_resources(_sweep(), 8, 2, use_gpu=False).trial == {"cpu": 1.0}


def test_trial_spec_records_what_a_trial_runs():
    plan = tune.check_resources(_sweep(resources_per_trial={"cpus_per_worker": 0.5}), 2, 0)
    spec = tune.trial_spec(_base(num_workers=2), plan)
    assert (spec.num_workers, spec.cpus_per_worker, spec.use_gpu) == (1, 0.5, False)


# ------------------------------------------------------------------------------------------------
# The search space in Tune's terms


def test_search_space_becomes_tune_sample_objects():
    from ray.tune.search import sample

    sweep = _sweep(search_space={
        "optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        "optimizer.weight_decay": {"uniform": [0.0, 0.1]},
        "batch_size": {"randint": [16, 65]},
        "optimizer.name": {"choice": ["adam", "sgd"]},
        "model.params.hidden": {"choice": [[64], [128, 64]]},
    })
    space = tune.search_space_to_tune(sweep)
    lr, wd, bs = space["optimizer.lr"], space["optimizer.weight_decay"], space["batch_size"]
    assert isinstance(lr, sample.Float) and isinstance(lr.sampler, sample.Float._LogUniform)
    assert (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(wd.sampler, sample.Float._Uniform) and (wd.lower, wd.upper) == (0.0, 0.1)
    assert isinstance(bs, sample.Integer) and (bs.lower, bs.upper) == (16, 65)
    assert isinstance(space["optimizer.name"], sample.Categorical)
    assert space["optimizer.name"].categories == ["adam", "sgd"]
    # Lists travel as JSON text (Optuna's categories are scalars) and come back as lists.
    assert space["model.params.hidden"].categories == ["[64]", "[128, 64]"]
    assert tune.decode_values(sweep, {"model.params.hidden": "[128, 64]", "optimizer.name": "sgd"}) == \
        {"model.params.hidden": [128, 64], "optimizer.name": "sgd"}
    for _ in range(20):
        assert 1e-4 <= lr.sample() <= 1e-2 and 16 <= bs.sample() < 65


def test_grids_are_shuffled_only_under_asha_and_repeatably():
    values = list(range(10))
    asha = _sweep(search_space={"batch_size": {"grid": [v + 1 for v in values]}}, num_samples=2)
    fifo = _sweep(search_space={"batch_size": {"grid": [v + 1 for v in values]}}, scheduler={"type": "fifo"})
    shuffled = tune.search_space_to_tune(asha)["batch_size"]["grid_search"]
    assert sorted(shuffled) == [v + 1 for v in values] and shuffled != [v + 1 for v in values]
    assert tune.search_space_to_tune(asha)["batch_size"]["grid_search"] == shuffled
    assert tune.search_space_to_tune(fifo)["batch_size"] == {"grid_search": [v + 1 for v in values]}
    assert tune.count_trials(asha) == 20


# ------------------------------------------------------------------------------------------------
# Helpers: overrides, history, results table


def test_apply_values_sets_dotted_paths_without_touching_the_input():
    spec = {"optimizer": {"lr": 0.1}, "batch_size": 8}
    out = config.apply_values(spec, {"optimizer.lr": 0.5, "model.params.hidden": [4], "batch_size": 16})
    assert out == {"optimizer": {"lr": 0.5}, "batch_size": 16, "model": {"params": {"hidden": [4]}}}
    assert spec == {"optimizer": {"lr": 0.1}, "batch_size": 8}
    assert "'batch_size' is a value, not a section" in _error(config.apply_values, spec, {"batch_size.x": 1})


def test_epoch_history_keeps_one_row_per_epoch():
    records = [{"epoch": 0, "val_accuracy": 0.5, "timestamp": 1}, {"epoch": 1, "val_accuracy": 0.6},
               {"epoch": 1, "val_accuracy": 0.7}, {"epoch": float("nan")}]
    assert tune.epoch_history(records) == [{"epoch": 0, "val_accuracy": 0.5}, {"epoch": 1, "val_accuracy": 0.7}]


def _trials():
    curve = lambda *accs: [{"epoch": i, "val_accuracy": a} for i, a in enumerate(accs)]  # noqa: E731
    return [
        {"trial_id": "a", "config": {"optimizer.lr": 1e-3}, "history": curve(0.5, 0.7, 0.8, 0.9), "error": None},
        {"trial_id": "b", "config": {"optimizer.lr": 1e-1}, "history": curve(0.3), "error": None},
        {"trial_id": "c", "config": {"optimizer.lr": 1e-2}, "history": curve(0.6, 0.95, 0.9, 0.91), "error": None},
        {"trial_id": "d", "config": {"optimizer.lr": 1.0}, "history": [], "error": "RuntimeError('nan')"},
    ]


def test_results_table_ranks_trials_and_marks_early_stops():
    rows = tune.results_table(_trials(), metric="val_accuracy", mode="max", max_t=4)
    assert [r["trial_id"] for r in rows] == ["c", "a", "b", "d"]
    c = rows[0]
    assert (c["best_val_accuracy"], c["best_epoch"], c["final_val_accuracy"], c["epochs"]) == (0.95, 1, 0.91, 4)
    assert [r["status"] for r in rows] == ["completed", "completed", "stopped early", "error"]
    assert rows[0]["config"] == {"optimizer.lr": 1e-2}
    low = tune.results_table(_trials(), metric="val_accuracy", mode="min", max_t=4)
    assert [r["trial_id"] for r in low][:1] == ["b"] and low[-1]["trial_id"] == "d"

    summary = tune.sweep_summary(rows, metric="val_accuracy", top=2)
    assert (summary["trials"], summary["trial_epochs"], summary["stopped_early"], summary["errors"]) == (4, 9, 1, 1)
    assert summary["best"]["trial_id"] == "c" and summary["best_metric"] == 0.95
    assert [r["trial_id"] for r in summary["top"]] == ["c", "a"]


def test_results_frame_has_one_column_per_swept_field(tmp_path):
    trials = [{"trial_id": "a", "config": {"model.params.hidden": [64, 32], "batch_size": 32},
               "history": [{"epoch": 0, "val_accuracy": 0.5}], "error": None}]
    frame = tune.results_frame(tune.results_table(trials, metric="val_accuracy", mode="max", max_t=2))
    assert list(frame.columns) == ["trial_id", "status", "epochs", "best_val_accuracy", "best_epoch",
                                   "final_val_accuracy", "model.params.hidden", "batch_size", "error"]
    assert frame.loc[0, "model.params.hidden"] == "[64, 32]" and frame.loc[0, "status"] == "stopped early"
    frame.to_parquet(tmp_path / "r.parquet")  # mixed types would fail here


def test_a_sweep_name_is_never_silently_reused(tmp_path):
    path = tune.experiment_path(str(tmp_path), "s1")
    assert path == str(tmp_path.resolve() / "sweeps" / "s1")
    assert "--resume: sweep 's1' at" in _error(sweep_run._check_experiment, path, "s1", True)  # nothing there
    Path(path).mkdir(parents=True)
    assert "sweep 's1' already exists" in _error(sweep_run._check_experiment, path, "s1", False)
    assert "holds no Tune experiment state" in _error(sweep_run._check_experiment, path, "s1", True)


# ------------------------------------------------------------------------------------------------
# The trial session runs the very training loop of `atoll train`


class _Batches:
    """Stands in for a materialised Ray Dataset: what train_loop calls on it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def iter_torch_batches(self, batch_size, device, dtypes, **_):
        for i in range(0, len(self.y), batch_size):
            yield {"x": self.x[i:i + batch_size].to(device), "y": self.y[i:i + batch_size].to(device)}


def test_tune_session_runs_the_training_loop(monkeypatch, capsys):
    import ray.tune
    from atoll import train
    from atoll.events import parse_events

    reports = []

    def report(metrics, checkpoint=None):  # what ray.tune.report receives, checkpoint files included
        with checkpoint.as_directory() as folder:
            meta = json.loads((Path(folder) / train.META_FILE).read_text())
            reports.append((metrics, sorted(p.name for p in Path(folder).iterdir()), meta["world_size"]))

    monkeypatch.setattr(ray.tune, "report", report)
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    spec = _base(epochs=3, batch_size=16, model={"type": "mlp", "params": {"hidden": [8]}})
    pre = data.Preprocessor(features=list("abcd"), label="label", mean=[0.0] * 4, std=[1.0] * 4, classes=[0, 1])
    session = tune.TuneSession({"train": _Batches(x, y), "validation": _Batches(x[:16], y[:16])},
                               trial_id="t_00001", values={"optimizer.lr": 0.01}, metric="val_accuracy", epochs=3)
    assert (session.rank, session.world_size, session.device().type) == (0, 1, "cpu")
    train.train_loop(train.loop_config(spec, pre, "sweep-t_00001", "fp32"), session)

    assert [m["epoch"] for m, _, _ in reports] == [0, 1, 2]
    assert all(files == ["atoll.json", "model.safetensors", "optim.pt"] and ws == 1 for _, files, ws in reports)
    events = [e for e in parse_events(capsys.readouterr().out) if e["event"] == "trial"]
    assert [(e["trial"], e["epoch"], e["status"]) for e in events] == \
        [("t_00001", 0, "running"), ("t_00001", 1, "running"), ("t_00001", 2, "finished")]
    assert events[0]["config"] == {"optimizer.lr": 0.01} and events[0]["metric"] == "val_accuracy"
    assert math.isclose(events[-1]["value"], reports[-1][0]["val_accuracy"])


def test_optuna_takes_the_search_space_lists_included():
    from ray.tune.search.optuna import OptunaSearch

    sweep, _ = tune.load_sweep(SWEEP, ["search.algorithm=optuna"])
    searcher = OptunaSearch(seed=0)
    assert searcher.set_search_properties("val_accuracy", "max", {"overrides": tune.search_space_to_tune(sweep)})
    values = tune.decode_values(sweep, searcher.suggest("t0")["overrides"])
    assert 3e-4 <= values["optimizer.lr"] <= 3e-2 and values["batch_size"] in (32, 64, 128)
    assert values["model.params.hidden"] in ([32], [128, 64], [256, 128])


def _result(history, config, error=None, best_checkpoints=None):
    """Stands in for a ray.tune.Result: the attributes a sweep reads."""
    import types

    import pandas as pd

    rows = [{**h, "trial_id": "abc_00001", "training_iteration": i + 1, "time_this_iter_s": 0.1}
            for i, h in enumerate(history)]
    return types.SimpleNamespace(metrics=rows[-1] if rows else {}, config={"overrides": config}, error=error,
                                 path="/x/run_trial_abc_00001_1", best_checkpoints=best_checkpoints or [],
                                 metrics_dataframe=pd.DataFrame(rows) if rows else None)


def test_tune_results_become_trial_records_and_best_checkpoints():
    sweep, _ = tune.load_sweep(SWEEP, [])
    history = [{"epoch": 0, "val_accuracy": 0.5, "checkpoint_path": "/ck/0"},
               {"epoch": 1, "val_accuracy": 0.8, "checkpoint_path": "/ck/1"},
               {"epoch": 2, "val_accuracy": 0.7, "checkpoint_path": "/ck/2"}]
    result = _result(history, {"model.params.hidden": "[32]", "batch_size": 64},
                     best_checkpoints=[("ckpt1", {"val_accuracy": 0.8, "epoch": 1}),
                                       ("ckpt0", {"val_accuracy": 0.5, "epoch": 0})])
    record = sweep_results._trial_record(sweep, result)
    assert record["trial_id"] == "abc_00001" and record["error"] is None
    assert record["config"] == {"model.params.hidden": [32], "batch_size": 64}
    assert [h["epoch"] for h in record["history"]] == [0, 1, 2] and "time_this_iter_s" not in record["history"][0]
    row = tune.results_table([record], metric="val_accuracy", mode="max", max_t=8)[0]
    assert (row["status"], row["best_epoch"]) == ("stopped early", 1)
    assert sweep_run._best_checkpoint(result, row, sweep, nested=False) == \
        ("ckpt1", {"val_accuracy": 0.8, "epoch": 1})
    ckpt, metrics = sweep_run._best_checkpoint(result, row, sweep, nested=True)  # the path came with the metrics
    assert ckpt.path == "/ck/1" and metrics["val_accuracy"] == 0.8
    failed = sweep_results._trial_record(sweep, _result([], {"batch_size": 32}, error=RuntimeError("boom")))
    assert failed["history"] == [] and "boom" in failed["error"]


def test_results_and_plot_are_written_next_to_the_experiment(tmp_path):
    import pandas as pd

    rows = tune.results_table(_trials(), metric="val_accuracy", mode="max", max_t=4)
    experiment = tune.experiment_path(str(tmp_path), "s")
    paths = sweep_results._write_outputs(rows, {t["trial_id"]: t["history"] for t in _trials()}, "val_accuracy",
                                         experiment)
    assert paths["results_csv"] == f"{experiment}/results.csv"
    assert list(pd.read_csv(paths["results_csv"]).trial_id) == ["c", "a", "b", "d"]
    assert len(pd.read_parquet(paths["results_parquet"])) == 4
    assert Path(paths["plot"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("algorithm,scheduler", [("random", "asha"), ("optuna", "fifo"), ("random", "hyperband"),
                                                 ("random", "successive_halving")])
def test_tuner_is_built_without_a_cluster(tmp_path, monkeypatch, algorithm, scheduler):
    import ray
    import ray.tune

    def no_cluster(*args, **kwargs):
        raise AssertionError("building a Tuner must not start Ray")

    monkeypatch.setattr(ray, "init", no_cluster)
    epochs = ["overrides.epochs=9"] if scheduler == "hyperband" else []  # a power of its reduction_factor 3
    sweep, _ = tune.load_sweep(SWEEP, [f"search.algorithm={algorithm}", f"scheduler.type={scheduler}", *epochs])
    trainable = ray.tune.with_resources(ray.tune.with_parameters(tune.run_trial, setup=None, train_ds=None,
                                                                 val_ds=None), {"cpu": 1.0})
    tune.build_tuner(sweep, trainable, storage=str(tmp_path), max_t=9, max_concurrent=2, max_failures=1)
    kind = {"asha": "AsyncHyperBandScheduler", "hyperband": "HyperBandScheduler", "fifo": "NoneType",
            "successive_halving": "SuccessiveHalving"}[scheduler]
    assert type(sweep_run.trial_scheduler(sweep, 9)).__name__ == kind  # the synchronous one for hyperband
    experiment = tune.experiment_path(str(tmp_path), sweep.name)
    assert ray.tune.Tuner.can_restore(experiment) and not ray.is_initialized()
    # From now on the name is taken: only --resume continues it.
    assert "already exists" in _error(sweep_run._check_experiment, experiment, sweep.name, False)
