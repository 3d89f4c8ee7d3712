"""The sweep's driver: load a sweep file, build the Tuner, run it, register the best trial's model.

:func:`load_sweep` reads and checks a sweep file with its training spec (the client calls it too, before
submitting); :func:`run_sweep` runs it on the connected cluster: it checks the resources, reads the data once
for every trial, builds or restores the ``tune.Tuner`` (:func:`build_tuner`), writes the results and
registers the winner (once, even when a finished sweep is resumed). The experiment lives at
:func:`experiment_path`, under :func:`sweeps_root`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atoll import capacity, config, events, exports, filesystems, tasks, train
from atoll.errors import ConfigError
from atoll.specs import BASE_DIR, CHECK_FILES, SHIPPED, TrainSpec, resolve_local
from atoll.tune.checks import check_models, check_resources, check_sweep, trial_spec
from atoll.tune.results import _trial_record, _write_outputs, epoch_history, results_table, sweep_summary
from atoll.tune.space import TRAINING_METRICS, SweepSpec, count_trials, search_space_to_tune
from atoll.tune.trial import TrialSetup, run_trial

# ------------------------------------------------------------------------------------------------
# Reading a sweep file


def training_spec_path(sweep_path: str | Path, sweep: SweepSpec, shipped: str | Path | None = None) -> Path:
    """The sweep's training spec file: its ``train:``, relative to the sweep file's folder.

    Raises:
        ConfigError: a relative ``train:`` leaves ``shipped``, the folder a job ships.
    """
    folder = Path(sweep_path).expanduser().resolve().parent
    try:
        return Path(resolve_local(sweep.train, folder, shipped)).expanduser()
    except ValueError as exc:
        raise ConfigError(f"{sweep_path}: train: {exc}.") from None


def load_sweep(path: str | Path, overrides: list[str] | None = None, *,
               shipped: str | Path | None = None) -> tuple[SweepSpec, TrainSpec]:
    """Read a sweep file (with ``--set`` overrides) and its training spec (with the sweep's overrides);
    check them together. Relative paths are relative to the folder of the file they are in (``train:`` to
    the sweep's, ``dataset.path`` to the training spec's); with ``shipped``, none may leave that folder.

    Returns:
        The sweep and the training spec every trial starts from.

    Raises:
        ConfigError: naming the file, the field and the fix.
    """
    raw = config.apply_overrides(config.read_yaml(path), overrides)
    sweep = config.load_model(SweepSpec, raw, str(path))
    train_path = training_spec_path(path, sweep, shipped)
    if not train_path.is_file():
        raise ConfigError(f"{path}: train: {sweep.train} not found (relative to the sweep's folder, "
                          f"{Path(path).expanduser().resolve().parent}); fix the path, e.g. train: train.yaml.")
    merged = config.apply_values(config.read_yaml(train_path), sweep.overrides)
    # The data must exist; the spec's per-worker resources need not fit, resources_per_trial replaces them.
    context: dict[str, Any] = {CHECK_FILES: True, BASE_DIR: str(train_path.resolve().parent)}
    if shipped is not None:
        context[SHIPPED] = str(shipped)
    base = config.load_model(TrainSpec, merged, f"{train_path} (with the overrides of {path})", context=context)
    if "metric" not in raw:  # what the task optimises, e.g. val_accuracy, or val_rmse for a regressor
        metric, mode = tasks.get(base.task).objective
        sweep = sweep.model_copy(update={"metric": metric, "mode": raw.get("mode") or mode})
    check_sweep(sweep, base, str(path))
    return sweep, base


# ------------------------------------------------------------------------------------------------
# The driver


def sweeps_root(storage: str) -> str:
    """Where sweeps live: ``<storage>/sweeps`` (a local folder or a URI)."""
    return filesystems.join(storage, "sweeps")  # absolute when local: Tune wants that


def experiment_path(storage: str, name: str) -> str:
    """The Tune experiment folder of a sweep."""
    return filesystems.join(sweeps_root(storage), name)


def _check_experiment(path: str, name: str, resume: bool) -> None:
    """A new sweep never silently continues an old one; --resume needs one to resume."""
    import pyarrow.fs as pafs
    from ray import tune

    fs, local = filesystems.resolve(path)
    exists = fs.get_file_info(local).type != pafs.FileType.NotFound
    if exists and not resume:
        raise ConfigError(f"sweep {name!r} already exists at {path}. Continue it with --resume, or choose a "
                          f"new name (--set name=NEW).")
    if resume and not tune.Tuner.can_restore(path):
        what = "holds no Tune experiment state" if exists else "does not exist"
        raise ConfigError(f"--resume: sweep {name!r} at {path} {what}; check the name, or start it without "
                          f"--resume.")


def _best_checkpoint(result, row: dict[str, Any], sweep: SweepSpec, nested: bool):
    """(checkpoint, metrics) of a trial's best epoch."""
    from ray import tune

    if nested:
        # Tune holds no checkpoint for a nested trainer: the path came with the metrics.
        epoch = row["best_epoch"]
        frame = result.metrics_dataframe
        records = epoch_history(frame.to_dict("records")) if frame is not None else []
        metrics = next((h for h in records if h.get("epoch") == epoch and h.get("checkpoint_path")), None)
        if metrics is None:
            return None, {}
        return tune.Checkpoint(metrics["checkpoint_path"]), metrics
    pairs = [(c, m) for c, m in result.best_checkpoints or [] if m.get(sweep.metric) is not None]
    if not pairs:
        return None, {}
    pick = max if sweep.mode == "max" else min
    return pick(pairs, key=lambda cm: cm[1][sweep.metric])


def _registered_before(storage: str, name: str, lineage: dict[str, Any]):
    """The version a resumed, already finished sweep registered (so --resume does not register it twice)."""
    from atoll import registry
    from atoll.errors import RegistryError

    keys = ("sweep", "experiment_path", "trial_id", "epoch")
    try:
        versions = registry.Registry(storage).list_versions(name)
    except RegistryError:
        return None
    return next((v for v in versions if all(v.lineage.get(k) == lineage.get(k) for k in keys)), None)


def trial_scheduler(sweep: SweepSpec, max_t: int):
    """Tune's scheduler for the sweep's ``scheduler.type`` (None: FIFO, every trial to ``max_t``)."""
    from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

    from atoll.tune.halving import SuccessiveHalving

    if sweep.scheduler.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=sweep.scheduler.grace_period,
                             reduction_factor=sweep.scheduler.reduction_factor)
    if sweep.scheduler.type == "hyperband":
        # Pauses a trial at each rung until its bracket has caught up; a paused trial resumes from its last
        # checkpoint (every epoch reports one), as after a restart.
        return HyperBandScheduler(time_attr="training_iteration", max_t=max_t,
                                  reduction_factor=sweep.scheduler.reduction_factor)
    if sweep.scheduler.type == "successive_halving":
        return SuccessiveHalving(num_samples=count_trials(sweep), max_t=max_t,
                                 grace_period=sweep.scheduler.grace_period,
                                 reduction_factor=sweep.scheduler.reduction_factor)
    return None


def build_tuner(sweep: SweepSpec, trainable, *, storage: str, max_t: int, max_concurrent: int | None,
                max_failures: int):
    """A new ``tune.Tuner`` for the sweep: its search space, scheduler, search algorithm and storage.

    Args:
        sweep: The sweep spec.
        trainable: The function trainable, wrapped with its parameters and resources.
        storage: Storage root; the experiment goes to ``<storage>/sweeps/<name>``.
        max_t: Most epochs per trial.
        max_concurrent: Most trials at once (None: as many as fit).
        max_failures: Restarts of a failed trial from its last checkpoint.
    """
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    scheduler = trial_scheduler(sweep, max_t)
    if sweep.scheduler.synchronous:
        max_concurrent = None  # see run_sweep
    # The limit goes on the search algorithm itself: TuneConfig.max_concurrent_trials alone did not hold
    # back a BasicVariantGenerator (seen: 4 trials at once with max_concurrent_trials=1).
    if sweep.search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=sweep.search.seed)
        if max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=max_concurrent)
    else:
        search_alg = BasicVariantGenerator(random_state=sweep.search.seed, max_concurrent=max_concurrent or 0)
    return tune.Tuner(
        trainable, param_space={"overrides": search_space_to_tune(sweep)},
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    max_concurrent_trials=max_concurrent, scheduler=scheduler,
                                    search_alg=search_alg),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=sweeps_root(storage),
            stop={"training_iteration": max_t},  # max_t below epochs holds under FIFO too
            # Every checkpoint of a trial is kept: Tune deletes one beyond num_to_keep as soon as a newer one
            # is registered, while the experiment state on storage may still name it; a driver killed in that
            # window leaves a trial that a resume cannot restore (seen in 2 of 4 runs of the sweep fault test).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=sweep.metric,
                                                    checkpoint_score_order=sweep.mode),
            failure_config=tune.FailureConfig(max_failures=max_failures)))


def run_sweep(sweep: SweepSpec, base: TrainSpec, *, storage: str, resume: bool = False,
              lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a sweep on the connected Ray cluster, write its results, register its best model.

    Args:
        sweep: The sweep spec.
        base: The training spec every trial starts from (``load_sweep``'s second value).
        storage: Storage root (local folder or URI): the experiment goes to ``<storage>/sweeps/<name>``.
        resume: Continue an interrupted sweep of this name (finished trials are not redone).
        lineage: Extra lineage for the registered version (job id, git commit, ...).

    Returns:
        Summary: best trial and metric, registered name/version, trial and trial-epoch counts, trials
        stopped early, top trials, and the paths of the experiment, results table and plot.

    Raises:
        ConfigError / DataError: before any trial starts.
    """
    from ray import tune

    check_sweep(sweep, base)
    experiment = experiment_path(storage, sweep.name)
    _check_experiment(experiment, sweep.name, resume)
    # Tune saves the experiment's state every 10 s or more by default; a driver that dies loses what happened
    # since, and a resume redoes it. The state of a small sweep is cheap to write every second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    addable = config.autoscaling_worker_types()
    cpus, gpus, max_cpus, max_gpus = capacity.live_capacity(addable)
    node_cpus, node_gpus = capacity.largest_live_node(addable)
    resources = check_resources(sweep, max_cpus, max_gpus, node_cpus=node_cpus, node_gpus=node_gpus,
                                use_gpu=base.use_gpu)
    spec = trial_spec(base, resources)
    plan = train.choose_scaling(spec, cluster_cpus=cpus, cluster_gpus=gpus, max_cpus=max_cpus,
                                max_gpus=max_gpus)
    train.check_gpu_workers(plan)
    dplan, pre, train_ds, val_ds = train.prepare(spec, storage)
    task = tasks.get(spec.task)
    model = spec.model.model_copy(update={"params": task.model_params(pre, spec.model.params)})
    check_models(sweep, spec.model_copy(update={"model": model}), pre.input_dim, task.out_dim(pre))
    # Materialise once here: trials share the blocks in the object store instead of each re-reading and
    # re-preprocessing (which would also need CPUs beyond the ones the trials hold).
    train_ds, val_ds = train_ds.materialize(), val_ds.materialize()
    max_t = sweep.scheduler.max_t or spec.epochs

    setup = TrialSetup(sweep=sweep.model_dump(mode="json"), base=spec.model_dump(mode="json"),
                       preprocess=pre.to_dict(), plan=plan, storage=storage,
                       in_memory=train.in_memory(spec, dplan, pre))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup, train_ds=train_ds, val_ds=val_ds), resources.trial)
    # A nested trainer's workers are invisible to Tune's accounting: cap trials at what the cluster holds.
    concurrent = sweep.max_concurrent_trials or (resources.max_parallel if resources.nested else None)
    if sweep.scheduler.synchronous:
        # A rung decides once every trial has reached it, so all of them must exist: a limit on live trials
        # (paused ones count) would hold back the trials the rung waits for. The cluster's CPUs and
        # resources_per_trial bound how many run at once (measured with Ray's HyperBand and a limit of 2: 72 of
        # 72 trial-epochs, nothing stopped).
        concurrent = None
    events.emit("sweep_start", sweep=sweep.name, experiment=experiment, trials=count_trials(sweep),
               metric=sweep.metric, mode=sweep.mode, max_t=max_t, scheduler=sweep.scheduler.type,
               algorithm=sweep.search.algorithm, resumed=resume, nested=resources.nested,
               trial_resources=resources.trial, max_concurrent=concurrent or resources.max_parallel,
               search_space={k: {d.kind: d.values} for k, d in sweep.search_space.items()},
               dataset=dplan.uri, rows=dplan.rows)

    if resume:
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        tuner = build_tuner(sweep, trainable, storage=storage, max_t=max_t, max_concurrent=concurrent,
                            max_failures=spec.max_failures)
    if spec.register_model:
        exports.warm_up()
    grid = tuner.fit()

    results = list(grid)
    trials = [_trial_record(sweep, r) for r in results]
    by_id = {t["trial_id"]: r for t, r in zip(trials, results)}
    rows = results_table(trials, metric=sweep.metric, mode=sweep.mode, max_t=max_t)
    paths = _write_outputs(rows, {t["trial_id"]: t["history"] for t in trials}, sweep.metric, experiment)
    summary = {"sweep": sweep.name, "experiment_path": experiment, "metric": sweep.metric, "mode": sweep.mode,
               "max_t": max_t, **sweep_summary(rows, metric=sweep.metric), **paths, "registered": None}
    events.emit("sweep_done", **summary)

    best = summary["best"]
    if best is None:
        return summary
    ckpt, metrics = _best_checkpoint(by_id[best["trial_id"]], best, sweep, resources.nested)
    metrics = {k: metrics[k] for k in TRAINING_METRICS if k in metrics}  # not Tune's bookkeeping keys
    if base.register_model and ckpt is not None:
        info = {"sweep": sweep.name, "trial_id": best["trial_id"], "config": best["config"],
                "experiment_path": experiment, "epoch": best["best_epoch"], "metric": sweep.metric,
                "dataset": dplan.uri, "dataset_fingerprint": dplan.fingerprint, **(lineage or {})}
        version = _registered_before(storage, base.name, info) or train.register_checkpoint(
            ckpt, metrics, storage=storage, name=base.name, lineage=info)
        summary["registered"] = {"name": version.name, "version": version.version}
        events.emit("registered", name=version.name, version=version.version,
                   metrics=version.manifest["metrics"], sweep=sweep.name, trial=best["trial_id"])
    return summary

