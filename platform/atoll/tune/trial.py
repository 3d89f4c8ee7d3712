"""Inside a trial: the Tune function trainable (:func:`run_trial`) and the sessions it trains through.

Trials run the very same loop as ``atoll train`` (:func:`atoll.train.train_loop`): in the trial's own process
through :class:`TuneSession` (one worker, the cheap path), or, when a trial asks for several workers, in a
``TorchTrainer`` nested in the trial (the Tune + Train V2 shape). This code runs in Ray workers, so it is
kept apart from the driver's and shipped by reference (``atoll.tune.trial.run_trial``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from atoll import config, data, events, tasks, train
from atoll.specs import TrainSpec
from atoll.tune.space import SweepSpec, decode_values


def _trial_event(trial_id: str, values: Mapping[str, Any], metric: str, metrics: Mapping[str, Any],
                 epochs: int) -> None:
    epoch = metrics.get("epoch")
    last = epoch is not None and epoch + 1 >= epochs
    events.emit("trial", trial=trial_id, config=dict(values), epoch=epoch, epochs=epochs, metric=metric,
               value=metrics.get(metric), status="finished" if last else "running")


class TuneSession:
    """The training loop's session inside a Tune trial: one process, rank 0 of 1, Tune's report/checkpoint.

    Implements the interface of :class:`atoll.train.TrainSession`, so :func:`atoll.train.train_loop` runs
    unchanged in a sweep.
    """

    rank = 0
    world_size = 1

    def __init__(self, datasets: Mapping[str, Any], *, trial_id: str, values: Mapping[str, Any], metric: str,
                 epochs: int) -> None:
        self._datasets = dict(datasets)
        self.trial_id, self.values, self.metric, self.epochs = trial_id, dict(values), metric, epochs

    def device(self):
        """CUDA when the trial was given a GPU (Tune sets CUDA_VISIBLE_DEVICES), else CPU."""
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def prepare(self, model, strategy: str):
        """One process: no DDP/FSDP wrapper, just the device (``strategy`` applies to several workers)."""
        return model.to(self.device())

    def get_checkpoint(self):
        """The trial's latest checkpoint when Tune restarts or resumes it, else None."""
        from ray import tune

        return tune.get_checkpoint()

    def dataset(self, name: str):
        """The whole (materialised) dataset: the trial is its only worker."""
        return self._datasets[name]

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Report one epoch to Tune (ASHA decides after each) with its checkpoint."""
        from ray import tune

        _trial_event(self.trial_id, self.values, self.metric, metrics, self.epochs)
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial receives besides its sampled values and the datasets (via tune.with_parameters)."""

    sweep: dict[str, Any]  # SweepSpec, dumped
    base: dict[str, Any]  # the trial spec (base + per-trial resources), dumped
    preprocess: dict[str, Any]
    plan: train.ScalingPlan
    storage: str
    in_memory: bool = False  # each trial holds the data as tensors after its first pass (data that fits)


def _event_callback(trial_id: str, values: Mapping[str, Any], metric: str, epochs: int):
    """A Ray Train callback (it runs in the nested trainer's controller) emitting the trial events."""
    from ray.train import UserCallback

    class TrialEvents(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            _trial_event(trial_id, values, metric, metrics[0], epochs)

    return TrialEvents()


def _fit_nested(loop_config: dict[str, Any], spec: TrainSpec, setup: TrialSetup, sweep: SweepSpec,
                trial_id: str, values: Mapping[str, Any], datasets: dict[str, Any]) -> None:
    """Several workers per trial: a TorchTrainer nested in the trial, reporting through Tune (Train V2).

    Only rank 0's metrics reach Tune, with the checkpoint's path in ``metrics["checkpoint_path"]``; the run
    is named after the trial, so a restarted or resumed trial continues its own run.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    # Keep the trial's best epoch by the sweep's metric: it is the one a sweep registers.
    build = train.build_trainer
    if spec.model.type == "xgboost":  # gradient-boosted trees: Ray Train's XGBoostTrainer, rounds as epochs
        from atoll.train import trees

        build = trees.build_trainer
    trainer = build(
        setup.plan, loop_config, storage=setup.storage, run_name=loop_config["run_name"], datasets=datasets,
        callbacks=[TuneReportCallback(), _event_callback(trial_id, values, sweep.metric, spec.epochs)],
        keep=1, metric=sweep.metric, mode=sweep.mode, max_failures=spec.max_failures)
    trainer.fit()


def run_trial(sampled: dict[str, Any], *, setup: TrialSetup, train_ds, val_ds) -> None:
    """The Tune function trainable: apply the sampled values to the trial spec and run the training loop.

    Args:
        sampled: Tune's config for this trial, ``{"overrides": {dotted path: value}}``.
        setup: The sweep, trial spec, preprocessing and scaling plan (shared by all trials).
        train_ds / val_ds: The materialised datasets (shared by all trials through the object store).
    """
    from ray import tune

    sweep = SweepSpec.model_validate(setup.sweep)
    values = decode_values(sweep, sampled["overrides"])
    spec = TrainSpec.model_validate(config.apply_values(setup.base, values))
    pre = tasks.get(spec.task).state_from_dict(setup.preprocess)  # the task's own fitted state
    trial_id = tune.get_context().get_trial_id()
    data.quiet_progress()  # this process's Ray Data context, not the driver's
    loop_config = train.loop_config(spec, pre, f"{sweep.name}-{trial_id}", setup.plan.precision,
                                    setup.in_memory)
    datasets = {"train": train_ds, "validation": val_ds}
    if spec.model.type == "xgboost":  # trees: a checkpoint every round, so a paused trial resumes where it stopped
        loop_config["checkpoint_every_round"] = True
    if setup.plan.num_workers > 1:
        _fit_nested(loop_config, spec, setup, sweep, trial_id, values, datasets)
    else:
        session = TuneSession(datasets, trial_id=trial_id, values=values, metric=sweep.metric,
                              epochs=spec.epochs)
        if spec.model.type == "xgboost":
            from atoll.train import trees

            trees.train_loop(loop_config, session)
        else:
            train.train_loop(loop_config, session)

