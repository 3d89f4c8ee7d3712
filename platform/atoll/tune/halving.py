"""Synchronous successive halving in one bracket: a Tune trial scheduler whose rungs wait for every trial.

Every trial runs ``grace_period`` epochs and pauses; once all of the sweep's trials have reached that rung (or
ended), the best ``1/reduction_factor`` of them (rounded up) go on to ``grace_period * reduction_factor``
epochs, the rest stop; and so on until ``max_t``. Ray's ASHA decides each trial as it arrives, so the first
trials to reach a rung are promoted against nothing (the demo sweep spent 0.36-0.67 of the FIFO trial-epochs
over 5 seeds); Ray's HyperBand starts with its least aggressive bracket, which runs its trials in full (0.75).
Here the epochs spent follow from the trial count alone: 8 trials of 8 epochs with rungs at 1 and 3 spend
8·1 + 3·2 + 1·5 = 19 of 64.

The cost: a paused trial frees its CPU and resumes from its last checkpoint (every epoch reports one), so a
rung is as slow as its slowest trial, and every trial must exist at once (the search algorithm may not hold
trials back: a paused trial counts as live, and a rung would wait forever for trials never created).
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which trials are compared: ``grace_period · reduction_factor^k`` below ``max_t``
    (the milestones Ray's ASHA uses too)."""
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(math.ceil(t))
        t *= reduction_factor
    return sorted(set(out))


class SuccessiveHalving(FIFOScheduler):
    """One bracket of synchronous successive halving over all ``num_samples`` trials (see the module).

    Args:
        num_samples: Trials in the sweep: the first rung decides once this many were added and reported.
        max_t / grace_period / reduction_factor: as ASHA's.
        time_attr: The result's time counter (one per epoch).
    """

    def __init__(self, *, num_samples: int, max_t: int, grace_period: int = 1, reduction_factor: float = 2,
                 time_attr: str = "training_iteration", metric: str | None = None, mode: str | None = None):
        super().__init__()
        self._num_samples, self._time_attr, self._reduction_factor = num_samples, time_attr, reduction_factor
        self._rungs = rungs(grace_period, reduction_factor, max_t)
        self._metric, self._mode = metric, mode
        self._added = 0
        self._live: dict[Trial, None] = {}          # trials not yet ended (insertion order: Tune's trial order)
        self._next_rung: dict[Trial, int] = {}      # index of the rung a trial has yet to report at
        self._values: list[dict[Trial, float]] = [{} for _ in self._rungs]  # the metric each reported at a rung
        self._decided: set[int] = set()
        self._to_resume: set[Trial] = set()         # paused trials a rung promoted

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    @property
    def rung_epochs(self) -> list[int]:
        return list(self._rungs)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._added += 1
        if trial.status in (Trial.TERMINATED, Trial.ERROR):  # restored from an interrupted sweep: it has ended
            return
        self._live[trial] = None
        self._next_rung[trial] = 0
        if trial.status == Trial.PAUSED:
            # Restored while waiting at a rung whose record died with the driver: let it go on, it is judged at
            # the next rung it reaches.
            self._to_resume.add(trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict[str, Any]) -> str:
        self._to_resume.discard(trial)
        k = self._next_rung.get(trial, len(self._rungs))
        if k >= len(self._rungs) or result.get(self._time_attr, 0) < self._rungs[k]:
            return TrialScheduler.CONTINUE
        value = result.get(self._metric)
        score = float(value) if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf
        self._values[k][trial] = score if self._mode == "max" else -score  # higher is better from here on
        self._next_rung[trial] = k + 1
        return self._settle(tune_controller, current=trial) or TrialScheduler.PAUSE

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict[str, Any]) -> None:
        self._ended(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._ended(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._ended(tune_controller, trial)

    def _ended(self, tune_controller, trial: Trial) -> None:
        self._live.pop(trial, None)
        self._to_resume.discard(trial)
        self._settle(tune_controller, current=None)  # the rung may have been waiting for this one

    def _settle(self, tune_controller, current: Trial | None) -> str | None:
        """Decide every rung that has all its results; the current trial's action if a decision named it."""
        action = None
        for k in range(len(self._rungs)):
            if k in self._decided:
                continue
            waiting = [t for t in self._live if self._next_rung[t] <= k]
            if waiting or self._added < self._num_samples:
                break  # rungs are decided in order
            self._decided.add(k)
            at_rung = sorted((t for t in self._live if t in self._values[k]), key=self._values[k].__getitem__,
                             reverse=True)
            keep = math.ceil(len(at_rung) / self._reduction_factor)
            for rank, t in enumerate(at_rung):
                promoted = rank < keep
                if t is current:
                    action = TrialScheduler.CONTINUE if promoted else TrialScheduler.STOP
                elif promoted:
                    self._to_resume.add(t)
                else:
                    tune_controller.stop_trial(t)  # paused (or pausing) at the rung
                if not promoted:
                    self._live.pop(t, None)
                    self._to_resume.discard(t)
        return action

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and trial in self._to_resume:
                return trial
        return None

    def debug_string(self) -> str:
        done = ", ".join(f"{r}: {len(v)}" for r, v in zip(self._rungs, self._values))
        return f"Successive halving (one bracket, rungs at epochs {self._rungs}; results per rung {done})."
