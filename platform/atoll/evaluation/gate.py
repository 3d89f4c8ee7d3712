"""The promotion gate: ``atoll models promote NAME:V ALIAS --gate``.

V takes the alias only if, on the same evaluation data (the same :func:`atoll.data.fingerprint`), it beats the
version the alias points at by the task's objective (``tasks.get(task).objective``: ``val_accuracy`` max,
``val_rmse`` min; the evaluation's metric of that name without ``val_``), and meets every threshold: those of
the ``gate:`` section of V's training spec (:class:`atoll.specs.GateSpec`, in its manifest) and those given on
the command line (which win for the same metric). ``max_regression`` lets V be worse than the current version by
at most that much on the objective (as MLflow's ``MetricThreshold`` bounds a candidate against its baseline);
without it V must be strictly better. An alias that points nowhere yet takes V when V meets the thresholds.

:func:`decide` is the policy (metrics in, a :class:`Decision` out: no registry, no Ray); :func:`judge` finds the
evaluations to compare (running the missing ones through ``evaluate`` when data is given), decides, and moves
the alias with the registry's compare-and-swap, from the version it judged against only, so a concurrent promote
is never overwritten unseen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from atoll.errors import ConfigError
from atoll.evaluation import EvaluationError, check_task, latest_on
from atoll.specs import GateSpec, gate_metric_problem

if TYPE_CHECKING:
    from atoll.registry import ModelVersion, Registry


class GateRefusedError(EvaluationError):
    """The gate kept the alias where it was; the message says which check failed, with both values."""


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def parse_bounds(items: list[str], option: str) -> dict[str, float]:
    """``["f1=0.9", "val_accuracy=0.95"]`` → ``{"f1": 0.9, "accuracy": 0.95}``.

    Raises:
        ConfigError: an item that is not METRIC=NUMBER.
    """
    bounds = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None or number != number:
            raise ConfigError(f"{option} {item}: expected METRIC=NUMBER, e.g. {option} f1=0.9.")
        bounds[name.strip().removeprefix("val_")] = number
    return bounds


@dataclasses.dataclass(frozen=True)
class Bound:
    """One threshold and where it was set (``--min``, ``gate.min in digits:4's spec``)."""

    value: float
    source: str


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """What V must meet: lowest and highest values per metric, and the objective's allowed regression."""

    min: dict[str, Bound] = dataclasses.field(default_factory=dict)
    max: dict[str, Bound] = dataclasses.field(default_factory=dict)
    max_regression: Bound | None = None

    @classmethod
    def of(cls, spec_gate: GateSpec | None, spec_source: str, cli: GateSpec | None = None) -> Thresholds:
        """The spec's gate with the command line's on top (the command line wins for the same metric)."""
        # (gate, how a bound from it is named): the spec's first, so that the command line's replace them
        parts = [(g, named) for g, named in ((spec_gate, lambda f: f"gate.{f} {spec_source}"),
                                             (cli, lambda f: "--" + f.replace("_", "-"))) if g is not None]
        lows = {m: Bound(v, named("min")) for g, named in parts for m, v in g.min.items()}
        highs = {m: Bound(v, named("max")) for g, named in parts for m, v in g.max.items()}
        regression = None
        for g, named in parts:
            if g.max_regression is not None:
                regression = Bound(g.max_regression, named("max_regression"))
        return cls(lows, highs, regression)

    def check_names(self, task: str) -> None:
        """Raises ConfigError: a metric the task's evaluation does not compute (with a did-you-mean)."""
        for side, bounds in (("min", self.min), ("max", self.max)):
            for metric, bound in bounds.items():
                where = f"--{side} {metric}" if bound.source.startswith("--") else bound.source
                if problem := gate_metric_problem(task, metric, where):
                    raise ConfigError(problem + ".")

    @property
    def empty(self) -> bool:
        return not self.min and not self.max


@dataclasses.dataclass(frozen=True)
class Decision:
    """The gate's answer: whether V passes, and each check with its reason (``passed`` per check)."""

    passed: bool
    checks: list[dict[str, Any]]

    @property
    def reasons(self) -> list[str]:
        return [c["reason"] for c in self.checks if not c["passed"]]


def decide(objective: tuple[str, str], candidate: dict[str, float], current: dict[str, float] | None,
           thresholds: Thresholds, *, current_ref: str = "the current version") -> Decision:
    """Whether a candidate's evaluation passes the gate against the current version's on the same data.

    Args:
        objective: The task's ``(metric, "max" | "min")``, e.g. ``("val_accuracy", "max")``.
        candidate: The candidate's evaluation metrics (bare names: ``accuracy``).
        current: The current version's on the same data, or None when the alias points nowhere yet.
        thresholds: The bounds to meet.
    """
    checks = []
    metric, mode = objective[0].removeprefix("val_"), objective[1]
    if current is not None:
        if metric not in candidate or metric not in current:
            checks.append({"check": "objective", "metric": metric, "passed": False,
                           "reason": f"{metric}: missing from an evaluation (the objective of this task)"})
        else:
            new, old = float(candidate[metric]), float(current[metric])
            worse_by = (old - new) if mode == "max" else (new - old)
            allowed = thresholds.max_regression
            better = "higher" if mode == "max" else "lower"
            if allowed is None:
                passed = worse_by < 0
                reason = (f"{metric} {_fmt(new)} does not beat {_fmt(old)} of {current_ref} ({better} is better; "
                          f"--max-regression allows a worse one)")
            else:
                passed = worse_by <= allowed.value + 1e-12
                reason = (f"{metric} {_fmt(new)} is {_fmt(worse_by)} worse than {_fmt(old)} of {current_ref}, more "
                          f"than {allowed.source} {_fmt(allowed.value)} allows")
            checks.append({"check": "objective", "metric": metric, "value": new, "current": old, "mode": mode,
                           "max_regression": None if allowed is None else allowed.value, "passed": passed,
                           "reason": reason})
    for side, bounds in (("min", thresholds.min), ("max", thresholds.max)):
        for name, bound in bounds.items():
            if name not in candidate:
                checks.append({"check": side, "metric": name, "bound": bound.value, "passed": False,
                               "reason": f"{name}: not in the evaluation (it has {', '.join(candidate)})"})
                continue
            value = float(candidate[name])
            passed = value >= bound.value if side == "min" else value <= bound.value
            sign = "<" if side == "min" else ">"
            checks.append({"check": side, "metric": name, "value": value, "bound": bound.value, "passed": passed,
                           "reason": f"{name} {_fmt(value)} {sign} {_fmt(bound.value)} ({bound.source})"})
    return Decision(all(c["passed"] for c in checks), checks)


def _data_label(record: dict[str, Any]) -> str:
    dataset = record.get("dataset") or {}
    return f"{dataset.get('path')} ({dataset.get('fingerprint')})"


def judge(reg: Registry, ref: str, alias: str, *, cli: GateSpec | None = None, data: str | None = None,
          evaluate: Callable[[ModelVersion, str], dict[str, Any]] | None = None,
          fingerprint: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Promote ``ref`` to ``alias`` if it passes the gate; otherwise leave the alias and raise.

    Args:
        cli: Thresholds from the command line (on top of V's spec's ``gate:``).
        data: Evaluation data: whichever side has no evaluation on it is evaluated first with ``evaluate``
            (version, data) → record. Without it, the newest data both sides were evaluated on is used.
        fingerprint: The data's fingerprint (default :func:`atoll.data.fingerprint` of ``data``).

    Returns:
        ``{"ref", "alias", "before", "moved", "decision", "candidate", "current"}``: the evaluations compared.

    Raises:
        ConfigError: a threshold naming a metric the task lacks, or V's spec's gate is invalid.
        EvaluationError: a language model, or no evaluation to judge by (the message says how to make one).
        GateRefusedError: V failed a check (the alias stays where it was).
        RegistryError: an unknown version or alias name, or the alias moved meanwhile.
    """
    import pydantic

    from atoll import registry, tasks

    name, version, source_alias = registry.parse_ref(ref)
    if version is None and source_alias is None:
        registry.versioned_ref(ref, "`atoll models promote --gate`")
    mv = reg.get(ref)
    task = check_task(mv)
    try:
        spec_gate = GateSpec.model_validate(mv.spec["gate"]) if mv.spec.get("gate") else None
    except pydantic.ValidationError as exc:
        raise ConfigError(f"{mv.ref}: its spec's gate: section is invalid ({exc.errors()[0]['msg']}); give the "
                          f"thresholds on the command line instead.") from None
    thresholds = Thresholds.of(spec_gate, f"in {mv.ref}'s spec", cli)
    thresholds.check_names(task)
    before = reg.aliases(mv.name).get(alias)
    result = {"ref": mv.ref, "alias": alias, "before": before, "moved": False, "decision": None,
              "candidate": None, "current": None}
    if before == mv.version:
        return result  # already there: nothing to judge, nothing to move
    current = reg.get(f"{mv.name}:{before}") if before is not None else None
    sides = [mv] + ([current] if current is not None else [])
    if data is not None:
        from atoll import batch
        from atoll import data as datasets

        fp = (fingerprint or datasets.fingerprint)(batch.resolve_local(data))
        records = []
        for side in sides:
            record = latest_on(reg, side, fp)
            if record is None:
                if evaluate is None:
                    raise EvaluationError(f"{side.ref} has no evaluation on {data}; run `atoll models evaluate "
                                          f"{side.ref} --data {data}` first.")
                record = evaluate(side, data)
            records.append(record)
    elif current is None and thresholds.empty:
        records = [None]  # nothing to compare and nothing to meet
    else:
        records = _common_evaluations(reg, sides, mv, alias)
    candidate_record = records[0]
    current_record = records[1] if current is not None else None
    result.update(candidate=candidate_record, current=current_record)
    decision = decide(tasks.get(task).objective, (candidate_record or {}).get("metrics") or {},
                      None if current_record is None else current_record.get("metrics") or {}, thresholds,
                      current_ref=f"{current.ref} (@{alias})" if current is not None else "")
    result["decision"] = dataclasses.asdict(decision)
    if not decision.passed:
        where = f" on {_data_label(candidate_record)}" if candidate_record else ""
        stays = f"{mv.name}:{before}" if before is not None else "nowhere"
        raise GateRefusedError(f"gate refused {mv.ref} for @{alias} (left at {stays}){where}: "
                               f"{'; '.join(decision.reasons)}.")
    reg.promote(mv.ref, alias, expected=before)
    result["moved"] = True
    return result


def _common_evaluations(reg: Registry, sides: list[ModelVersion], mv: ModelVersion, alias: str) -> list[dict[str, Any]]:
    """The newest evaluations of each side on the newest data that every side was evaluated on.

    Raises:
        EvaluationError: there is none (naming the command that makes one).
    """
    by_side = [reg.evaluations(s.name, s.version) for s in sides]
    shared = set.intersection(*({(r.get("dataset") or {}).get("fingerprint") for r in found} for found in by_side))
    for record in reversed(by_side[0]):  # the candidate's newest first
        fp = (record.get("dataset") or {}).get("fingerprint")
        if fp in shared:
            return [record] + [latest_on(reg, s, fp) for s in sides[1:]]  # type: ignore[misc]
    refs = " and ".join(s.ref for s in sides)
    raise EvaluationError(f"no evaluation of {refs} on the same data to judge {mv.ref} for @{alias} by; pass "
                          f"--data PATH (labelled rows: each side lacking an evaluation on it is evaluated first).")
