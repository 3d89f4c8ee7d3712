"""Hyperparameter sweeps with Ray Tune: a sweep spec, its search space, ASHA, and the best model registered.

A sweep file (``jobs/configs/sweep.yaml``) names a training spec, fixed overrides, and a search space keyed
by dotted training-spec paths::

    search_space:
      optimizer.lr: {loguniform: [0.0003, 0.03]}
      model.params.hidden: {choice: [[64], [128, 64]]}

Everything is checked before any trial starts (:func:`load_sweep`, :func:`check_sweep`,
:func:`check_resources`). Trials run the very same loop as ``atoll train``
(:func:`atoll.train.train_loop`): in the trial's own process through :class:`TuneSession` (one worker, the
cheap path), or, when a trial asks for several workers, in a ``TorchTrainer`` nested in the trial (the Tune
+ Train V2 shape). The data is read and preprocessed once on the driver and shared by every trial.

The submodules, each importing only those above it: :mod:`~atoll.tune.space` (the sweep spec, its search
space in Tune's terms), :mod:`~atoll.tune.checks` (checks against the training spec and the cluster),
:mod:`~atoll.tune.trial` (inside a trial), :mod:`~atoll.tune.results` (the results table and files),
:mod:`~atoll.tune.run` (the driver) and ``__main__`` (the job, ``python -m atoll.tune``). This module
re-exports what the rest of Atoll uses.
"""

from atoll.tune.checks import check_models, check_resources, check_search_path, check_sweep, trial_spec
from atoll.tune.results import epoch_history, results_frame, results_table, sweep_summary
from atoll.tune.run import (
    build_tuner,
    experiment_path,
    load_sweep,
    run_sweep,
    sweeps_root,
    training_spec_path,
)
from atoll.tune.space import SweepSpec, count_trials, decode_values, search_space_to_tune
from atoll.tune.trial import TuneSession, run_trial

__all__ = [
    "SweepSpec", "TuneSession", "build_tuner", "check_models", "check_resources", "check_search_path",
    "check_sweep", "count_trials", "decode_values", "epoch_history", "experiment_path", "load_sweep",
    "results_frame", "results_table", "run_sweep", "run_trial", "search_space_to_tune", "sweep_summary",
    "sweeps_root", "training_spec_path", "trial_spec",
]
