"""Evaluation (`atoll models evaluate`) and the promotion gate (`atoll models promote --gate`), issue 35 items 5
and 6. Most tests need no Ray: the metrics against scikit-learn's, the gate's decisions, the records' storage
beside a sealed version, and the one-line errors before anything is submitted. The `cluster` tests evaluate two
real digits versions on the demo's held-out rows and gate an alias between them."""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from atoll import evaluation
from atoll.errors import ConfigError, DataError, RegistryError
from atoll.evaluation import EvaluationError, gate
from atoll.registry import ModelVersion, Registry
from atoll.specs import EVALUATED_METRICS, GateSpec, TrainSpec
from conftest import run_cli

# ------------------------------------------------------------------------------------------------
# Metrics


def test_classification_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    predictions = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 6, 500))  # class 5: predicted, never true
    metrics, per_class = evaluation.classification_metrics(labels, predictions)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert set(per_class) == {"0", "1", "2", "3", "4", "5"}
    assert per_class["5"]["rows"] == 0 and per_class["5"]["predicted"] == int((predictions == 5).sum())
    assert sum(c["correct"] for c in per_class.values()) == int((labels == predictions).sum())
    assert sum(c["rows"] for c in per_class.values()) == 500

    words, _ = evaluation.classification_metrics(np.array(["ham", "spam", "ham"], dtype=object),
                                                 np.array(["ham", "ham", "ham"], dtype=object))
    assert words["accuracy"] == pytest.approx(2 / 3)
    assert words["f1"] == pytest.approx(f1_score(["ham", "spam", "ham"], ["ham"] * 3, average="macro"))


def test_regression_metrics_match_scikit_learn_in_the_targets_units() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    labels = rng.normal(150, 70, 300)  # disease progression scores, not standardised
    predictions = labels + rng.normal(0, 50, 300)
    got = evaluation.regression_metrics(labels, predictions)
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(labels, predictions)))
    assert got["mae"] == pytest.approx(mean_absolute_error(labels, predictions))
    assert got["r2"] == pytest.approx(r2_score(labels, predictions))
    assert 40 < got["rmse"] < 60  # in the target's units
    assert evaluation.regression_metrics(np.ones(4), np.zeros(4))["r2"] == 0.0  # labels that do not vary


@pytest.mark.parametrize("task", sorted(EVALUATED_METRICS))
def test_score_reports_what_a_gate_may_name(task: str) -> None:
    scored = evaluation.score(task, np.array([1, 2, 3, 1]), np.array([1, 2, 2, 1]))
    assert tuple(scored["metrics"]) == EVALUATED_METRICS[task]
    assert ("per_class" in scored) == (task != "tabular-regression")


def test_rows_without_a_label_are_left_out() -> None:
    table = pa.table({"y": pa.array([1.0, None, float("nan"), 2.0]), "prediction": pa.array([1.0, 5.0, 5.0, 3.0])})
    labels, predictions, left_out = evaluation.labelled(table)
    assert labels.tolist() == [1.0, 2.0] and predictions.tolist() == [1.0, 3.0] and left_out == 2
    words = pa.table({"y": pa.array(["a", None, "b"]), "prediction": pa.array(["a", "a", "a"])})
    labels, _, left_out = evaluation.labelled(words)
    assert labels.tolist() == ["a", "b"] and left_out == 1
    with pytest.raises(DataError, match="no labelled rows"):
        evaluation.classification_metrics(np.array([]), np.array([]))


# ------------------------------------------------------------------------------------------------
# The gate's decision (a policy: metrics in, a decision out)

ACC = ("val_accuracy", "max")
RMSE = ("val_rmse", "min")


def _th(low: dict[str, float] | None = None, high: dict[str, float] | None = None,
        regression: float | None = None) -> gate.Thresholds:
    return gate.Thresholds.of(None, "", GateSpec(min=low or {}, max=high or {}, max_regression=regression))


def test_a_better_version_passes_and_a_worse_one_is_refused_with_both_values() -> None:
    assert gate.decide(ACC, {"accuracy": 0.96, "f1": 0.95}, {"accuracy": 0.90, "f1": 0.9}, _th()).passed
    worse = gate.decide(ACC, {"accuracy": 0.87}, {"accuracy": 0.96}, _th(), current_ref="digits:1 (@production)")
    assert not worse.passed
    assert worse.reasons == ["accuracy 0.87 does not beat 0.96 of digits:1 (@production) (higher is better; "
                             "--max-regression allows a worse one)"]
    # the direction is the objective's: lower RMSE is better
    assert gate.decide(RMSE, {"rmse": 50.0}, {"rmse": 55.0}, _th()).passed
    assert not gate.decide(RMSE, {"rmse": 56.0}, {"rmse": 55.0}, _th()).passed


def test_a_tie_is_refused_unless_a_regression_is_allowed() -> None:
    assert not gate.decide(ACC, {"accuracy": 0.9}, {"accuracy": 0.9}, _th()).passed
    assert gate.decide(ACC, {"accuracy": 0.9}, {"accuracy": 0.9}, _th(regression=0.0)).passed


def test_max_regression_bounds_how_much_worse_it_may_be() -> None:
    assert gate.decide(ACC, {"accuracy": 0.955}, {"accuracy": 0.96}, _th(regression=0.01)).passed
    refused = gate.decide(ACC, {"accuracy": 0.94}, {"accuracy": 0.96}, _th(regression=0.01))
    assert not refused.passed
    assert refused.reasons == ["accuracy 0.94 is 0.02 worse than 0.96 of the current version, more than "
                               "--max-regression 0.01 allows"]
    assert gate.decide(RMSE, {"rmse": 60.5}, {"rmse": 60.0}, _th(regression=1.0)).passed
    assert not gate.decide(RMSE, {"rmse": 62.0}, {"rmse": 60.0}, _th(regression=1.0)).passed


def test_thresholds_say_which_metric_its_value_and_the_bound() -> None:
    decision = gate.decide(ACC, {"accuracy": 0.97, "f1": 0.85}, {"accuracy": 0.9}, _th(low={"f1": 0.9, "accuracy": 0.95}))
    assert not decision.passed
    assert decision.reasons == ["f1 0.85 < 0.9 (--min)"]  # accuracy met both its bound and the current version
    regression = gate.decide(RMSE, {"rmse": 61.0, "r2": 0.5}, None, _th(high={"rmse": 60}))
    assert regression.reasons == ["rmse 61 > 60 (--max)"]


def test_with_no_current_version_thresholds_alone_decide() -> None:
    assert gate.decide(ACC, {"accuracy": 0.5}, None, _th()).passed
    assert gate.decide(ACC, {"accuracy": 0.95}, None, _th(low={"accuracy": 0.9})).passed
    assert not gate.decide(ACC, {"accuracy": 0.85}, None, _th(low={"accuracy": 0.9})).passed


def test_the_command_line_wins_over_the_spec_and_names_are_checked() -> None:
    spec = GateSpec(min={"val_f1": 0.8, "accuracy": 0.9}, max_regression=0.05)
    th = gate.Thresholds.of(spec, "in digits:4's spec", GateSpec(min={"f1": 0.95}))
    assert th.min["f1"] == gate.Bound(0.95, "--min")
    assert th.min["accuracy"] == gate.Bound(0.9, "gate.min in digits:4's spec")
    assert th.max_regression == gate.Bound(0.05, "gate.max_regression in digits:4's spec")
    with pytest.raises(ConfigError, match=r"--min f11: unknown metric 'f11' .* did you mean 'f1'\?"):
        _th(low={"f11": 0.9}).check_names("tabular-classification")
    with pytest.raises(ConfigError, match="unknown metric 'accuracy' for a tabular-regression model"):
        _th(low={"accuracy": 0.9}).check_names("tabular-regression")
    assert gate.parse_bounds(["val_f1=0.9", "rmse=60"], "--min") == {"f1": 0.9, "rmse": 60.0}
    for bad in ("f1", "f1=high", "=0.9", "f1=nan"):
        with pytest.raises(ConfigError, match=r"expected METRIC=NUMBER, e.g. --min f1=0.9"):
            gate.parse_bounds([bad], "--min")


def test_a_training_spec_takes_a_gate_section() -> None:
    spec = TrainSpec.model_validate({"name": "m", "dataset": {"path": "x"},
                                     "gate": {"min": {"val_f1": 0.9}, "max_regression": 0.01}})
    assert spec.gate is not None and spec.gate.min == {"f1": 0.9} and spec.gate.max_regression == 0.01
    assert TrainSpec.model_validate({"name": "m", "dataset": {"path": "x"}}).gate is None
    with pytest.raises(ValueError, match="gate.max.rmse: unknown metric 'rmse' for a tabular-classification"):
        TrainSpec.model_validate({"name": "m", "dataset": {"path": "x"}, "gate": {"max": {"rmse": 60}}})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        TrainSpec.model_validate({"name": "m", "dataset": {"path": "x"}, "gate": {"minimum": {"f1": 0.9}}})
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        TrainSpec.model_validate({"name": "m", "dataset": {"path": "x"}, "gate": {"max_regression": -1}})


# ------------------------------------------------------------------------------------------------
# Records beside a sealed version, and the gate on a registry (no Ray)

SCHEMA = {"task": "tabular-classification", "input_kind": "table", "features": ["a", "b"], "num_features": 2,
          "label": "y", "classes": [0, 1], "dtype": "float32"}


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.pt").write_bytes(b"not read by these tests")
    (d / "atoll.json").write_text(json.dumps({"input_schema": SCHEMA}))
    return d


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("ATOLL_STORAGE", str(tmp_path / "storage"))
    return Registry(str(tmp_path / "storage"))


def _version(reg: Registry, ckpt: Path, task: str = "tabular-classification", name: str = "digits",
             spec: dict[str, Any] | None = None) -> ModelVersion:
    schema = {**SCHEMA, "task": task}
    return reg.register(name, str(ckpt), metrics={"val_accuracy": 0.9}, spec={"task": task, **(spec or {})},
                        input_schema=schema)


def _record(fingerprint: str = "sha256:aaaa", **metrics: float) -> dict[str, Any]:
    return {"dataset": {"path": "holdout.parquet", "fingerprint": fingerprint}, "rows": 180,
            "metrics": metrics or {"accuracy": 0.9, "f1": 0.9}, "job": "atoll-evaluate-x"}


def _stored(reg: Registry, folder: str) -> set[str]:
    return {posixpath.relpath(i.path, folder) for i in reg._folders.listing(folder, recursive=True)
            if i.type == pafs.FileType.File}


def test_records_live_beside_the_sealed_version_and_are_listed_oldest_first(reg: Registry, ckpt: Path) -> None:
    mv = _version(reg, ckpt)
    folder = reg._folders.version_dir("digits", 1)
    before = _stored(reg, folder)
    first = reg.add_evaluation("digits", 1, {**_record(accuracy=0.8, f1=0.7), "created_at": "2025-01-01T00:00:00+00:00"})
    second = reg.add_evaluation("digits", 1, _record(accuracy=0.9, f1=0.8))
    assert _stored(reg, folder) == before == {*mv.files, "manifest.json"}  # the version's folder is untouched
    again = reg.get("digits:1")  # and its manifest still verifies against its seal
    assert again.manifest == mv.manifest
    assert [r["id"] for r in reg.evaluations("digits", 1)] == [first["id"], second["id"]]
    assert first["id"].startswith("20250101T000000-") and (first["model"], first["version"]) == ("digits", 1)
    assert reg.evaluations("digits", 1)[1]["metrics"] == {"accuracy": 0.9, "f1": 0.8}
    with pytest.raises(RegistryError, match="no model named 'digitz'"):
        reg.add_evaluation("digitz", 1, _record())
    with pytest.raises(RegistryError):
        reg.evaluations("digits", 7)


def test_a_crash_mid_write_leaves_no_half_record(reg: Registry, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _version(reg, ckpt)
    reg.add_evaluation("digits", 1, _record())
    folder = Path(reg._folders.evaluations_dir("digits", 1))

    class CrashesBeforeTheRename:
        """The registry's filesystem, but the writer dies right after writing the temporary file."""

        def __init__(self, fs) -> None:
            self.fs = fs

        def __getattr__(self, name: str):
            return getattr(self.fs, name)

        def move(self, src: str, dst: str) -> None:
            raise OSError("killed before the rename")

    monkeypatch.setattr(reg._folders, "fs", CrashesBeforeTheRename(reg._folders.fs))
    with pytest.raises(OSError, match="killed"):
        reg.add_evaluation("digits", 1, _record(accuracy=0.1, f1=0.1))
    monkeypatch.undo()
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the crash's temporary file stays, under a name no reader takes
    (folder / "zz-truncated.json").write_text('{"metrics": {"accura')  # a foreign, broken file
    records = reg.evaluations("digits", 1)
    assert len(records) == 1 and records[0]["metrics"]["accuracy"] == 0.9


def test_show_lists_the_evaluations(reg: Registry, ckpt: Path) -> None:
    from atoll.cli import app
    from typer.testing import CliRunner

    _version(reg, ckpt)
    reg.add_evaluation("digits", 1, _record(accuracy=0.9611, f1=0.9598))
    shown = CliRunner().invoke(app, ["models", "show", "digits:1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert [r["metrics"]["accuracy"] for r in json.loads(shown.stdout)["evaluations"]] == [0.9611]
    table = CliRunner().invoke(app, ["models", "show", "digits:1"])
    assert table.exit_code == 0 and "Evaluations" in table.stdout and "accuracy 0.9611" in table.stdout
    assert "sha256:aaaa" in table.stdout


def test_the_gate_refuses_a_worse_version_and_moves_the_alias_for_a_better_one(reg: Registry, ckpt: Path) -> None:
    for _ in range(3):
        _version(reg, ckpt)
    reg.set_alias("digits", 2, "production")
    reg.add_evaluation("digits", 1, _record(accuracy=0.85, f1=0.84))
    reg.add_evaluation("digits", 2, _record(accuracy=0.95, f1=0.94))
    reg.add_evaluation("digits", 3, _record(accuracy=0.97, f1=0.96))
    with pytest.raises(gate.GateRefusedError) as refused:
        gate.judge(reg, "digits:1", "production")
    assert str(refused.value) == ("gate refused digits:1 for @production (left at digits:2) on holdout.parquet "
                                  "(sha256:aaaa): accuracy 0.85 does not beat 0.95 of digits:2 (@production) "
                                  "(higher is better; --max-regression allows a worse one).")
    assert reg.aliases("digits") == {"production": 2}
    with pytest.raises(gate.GateRefusedError, match=r"accuracy 0.97 < 0.999 \(--min\)"):
        gate.judge(reg, "digits:3", "production", cli=GateSpec(min={"accuracy": 0.999}))
    assert reg.aliases("digits") == {"production": 2}
    done = gate.judge(reg, "digits:3", "production")
    assert done["moved"] and done["before"] == 2 and reg.aliases("digits") == {"production": 3}
    assert gate.judge(reg, "digits:3", "production")["decision"] is None  # already there: nothing to judge


def test_the_gate_through_the_cli_says_what_passed_or_why_not(reg: Registry, ckpt: Path) -> None:
    from atoll.cli import app
    from typer.testing import CliRunner

    for _ in range(2):
        _version(reg, ckpt)
    reg.set_alias("digits", 1, "production")
    reg.add_evaluation("digits", 1, _record(accuracy=0.95, f1=0.94))
    reg.add_evaluation("digits", 2, _record(accuracy=0.97, f1=0.96))
    refused = CliRunner().invoke(app, ["models", "promote", "digits:2", "production", "--gate", "--min", "val_f1=0.99"])
    assert isinstance(refused.exception, gate.GateRefusedError)
    assert "f1 0.96 < 0.99 (--min)" in str(refused.exception) and reg.aliases("digits") == {"production": 1}
    passed = CliRunner().invoke(app, ["models", "promote", "digits:2", "production", "--gate", "--min", "f1=0.9"])
    assert passed.exit_code == 0, passed.output
    assert " ".join(passed.stdout.split()) == ("digits@production → digits:2 (was digits:1): gate passed: accuracy "
                                              "0.97 vs 0.95; f1 0.96 ≥ 0.9")
    assert reg.aliases("digits") == {"production": 2}


def test_the_spec_gate_of_the_version_applies(reg: Registry, ckpt: Path) -> None:
    _version(reg, ckpt, spec={"gate": {"min": {"f1": 0.95}, "max": {}, "max_regression": None}})
    reg.add_evaluation("digits", 1, _record(accuracy=0.97, f1=0.9))
    with pytest.raises(gate.GateRefusedError, match=r"f1 0.9 < 0.95 \(gate.min in digits:1's spec\)"):
        gate.judge(reg, "digits:1", "staging")  # an alias that points nowhere: thresholds alone decide
    assert reg.aliases("digits") == {}
    assert gate.judge(reg, "digits:1", "staging", cli=GateSpec(min={"f1": 0.85}))["moved"]  # the command line wins


def test_the_gate_compares_evaluations_on_the_same_data_only(reg: Registry, ckpt: Path) -> None:
    _version(reg, ckpt)
    _version(reg, ckpt)
    reg.set_alias("digits", 1, "production")
    reg.add_evaluation("digits", 1, _record("sha256:old", accuracy=0.99, f1=0.99))
    reg.add_evaluation("digits", 2, _record("sha256:new", accuracy=0.95, f1=0.95))
    with pytest.raises(EvaluationError, match=r"no evaluation of digits:2 and digits:1 on the same data .* --data PATH"):
        gate.judge(reg, "digits:2", "production")
    evaluated: list[str] = []

    def evaluate(mv: ModelVersion, path: str) -> dict[str, Any]:  # what the CLI runs as a Ray job
        evaluated.append(mv.ref)
        return reg.add_evaluation(mv.name, mv.version, _record("sha256:new", accuracy=0.90, f1=0.9))

    done = gate.judge(reg, "digits:2", "production", data="holdout.parquet", evaluate=evaluate,
                      fingerprint=lambda uri: "sha256:new")
    assert evaluated == ["digits:1"]  # digits:2 already had an evaluation on that data
    assert done["moved"] and done["current"]["metrics"]["accuracy"] == 0.90 and reg.aliases("digits") == {"production": 2}


def test_a_concurrent_promote_is_not_overwritten(reg: Registry, ckpt: Path) -> None:
    for _ in range(3):
        _version(reg, ckpt)
    reg.set_alias("digits", 1, "production")
    with pytest.raises(RegistryError, match=r"@production of 'digits' moved to digits:1 meanwhile \(it pointed at "
                                            r"nothing\)"):
        reg.set_alias("digits", 2, "production", expected=None)
    reg.set_alias("digits", 3, "production")  # someone else's promote, after the gate judged against digits:1
    with pytest.raises(RegistryError, match="moved to digits:3 meanwhile"):
        reg.promote("digits:2", "production", expected=1)
    assert reg.aliases("digits") == {"production": 3}
    assert reg.promote("digits:2", "production", expected=3)[1] == 3 and reg.aliases("digits")["production"] == 2


# ------------------------------------------------------------------------------------------------
# One-line errors, before any job is submitted (no cluster: jobs.submit is never reached)


@pytest.fixture
def labelled_version(reg: Registry, ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from atoll import jobs

    def never(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("a job was submitted")

    monkeypatch.setattr(jobs, "submit", never)
    _version(reg, ckpt)
    _version(reg, ckpt, task="text-generation", name="writer")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0], "y": [0, 1]}), path)
    return path


def _one_line(args: list[str]) -> tuple[type, str]:
    from atoll.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and result.exception is not None, result.output
    message = str(result.exception)
    assert "\n" not in message, message
    return type(result.exception), message


def test_bad_requests_are_one_line_before_any_job(labelled_version: Path, tmp_path: Path) -> None:
    rows = str(labelled_version)
    kind, said = _one_line(["models", "evaluate", "digits:9", "--data", rows])
    assert kind is RegistryError and "digits" in said and "9" in said
    kind, said = _one_line(["models", "evaluate", "digits:1", "--data", "nope.parquet"])
    assert kind is DataError and said.startswith("--data nope.parquet: not found")
    no_label = tmp_path / "unlabelled.parquet"
    pq.write_table(pa.table({"a": [1.0], "b": [2.0]}), no_label)
    kind, said = _one_line(["models", "evaluate", "digits:1", "--data", str(no_label)])
    assert kind is DataError and "no label column 'y'" in said and "its columns are a, b" in said
    words = tmp_path / "words.parquet"
    pq.write_table(pa.table({"a": [1.0], "b": [2.0], "y": ["zero"]}), words)
    kind, said = _one_line(["models", "evaluate", "digits:1", "--data", str(words)])
    assert kind is DataError and "label column 'y' is string" in said and "must hold numbers" in said
    bad_feature = tmp_path / "bad_feature.parquet"
    pq.write_table(pa.table({"a": ["x"], "b": [2.0], "y": [0]}), bad_feature)
    kind, said = _one_line(["models", "evaluate", "digits:1", "--data", str(bad_feature)])
    assert kind is DataError and said.startswith(f"--data {bad_feature}: column(s) a (string)")
    kind, said = _one_line(["models", "evaluate", "writer:1", "--data", rows])
    assert kind is EvaluationError and "evaluation of language models is not supported yet" in said


def test_bad_gate_options_are_one_line(labelled_version: Path, reg: Registry) -> None:
    kind, said = _one_line(["models", "promote", "digits:1", "production", "--min", "f1=0.9"])
    assert kind is ConfigError and said.startswith("--min is a condition of the promotion gate: add --gate")
    kind, said = _one_line(["models", "promote", "digits:1", "production", "--gate", "--min", "f1"])
    assert kind is ConfigError and "expected METRIC=NUMBER" in said
    kind, said = _one_line(["models", "promote", "digits:1", "production", "--gate", "--max", "rmse=60"])
    assert kind is ConfigError and "unknown metric 'rmse' for a tabular-classification model" in said
    kind, said = _one_line(["models", "promote", "digits:1", "production", "--gate", "--min", "f1=0.9"])
    assert kind is EvaluationError and "no evaluation of digits:1 on the same data" in said
    kind, said = _one_line(["models", "promote", "writer:1", "production", "--gate"])
    assert kind is EvaluationError and "not supported yet" in said
    kind, said = _one_line(["models", "promote", "digits", "production", "--gate"])
    assert kind is RegistryError
    assert reg.aliases("digits") == {}


# ------------------------------------------------------------------------------------------------
# On the cluster: two real versions, the demo's held-out rows


@pytest.mark.cluster
def test_evaluate_two_versions_and_gate_between_them(trained_digits: dict, tmp_path) -> None:
    import torch
    from atoll import data
    from safetensors.torch import load_file, save_file

    storage = os.environ["ATOLL_STORAGE"]
    holdout = data.prepare_demo(storage, "digits")["holdout"]
    good = trained_digits["registered"]["version"]
    reg = Registry(storage)
    # A worse version without a second training run: the session's model with noise added to its weights
    source = reg.get(f"digits:{good}")
    folder = reg.local_copy(source, tmp_path / "weak")
    os.remove(f"{folder}/manifest.json")  # the registry writes its own
    torch.manual_seed(0)
    weights = load_file(f"{folder}/model.safetensors")
    save_file({k: v + 0.3 * torch.randn_like(v) for k, v in weights.items()}, f"{folder}/model.safetensors")
    weak = reg.register("digits", folder, metrics=source.metrics, spec=source.spec, lineage={"note": "weights + noise"},
                        input_schema=source.input_schema, files_from_checkpoint=False).version
    sealed = reg.get(f"digits:{weak}").manifest

    evaluated = run_cli("models", "evaluate", f"digits:{weak}", "--data", holdout, "--json", timeout=300)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
    record = json.loads(evaluated.stdout)
    assert record["rows"] == 180 and record["dataset"]["fingerprint"] == data.fingerprint(holdout)
    assert set(record["metrics"]) == {"accuracy", "f1"} and record["job"].startswith("atoll-evaluate-")
    assert sum(c["rows"] for c in record["per_class"].values()) == 180
    assert reg.get(f"digits:{weak}").manifest == sealed  # still sealed, unchanged
    shown = json.loads(run_cli("models", "show", f"digits:{weak}", "--json").stdout)
    assert [r["id"] for r in shown["evaluations"]] == [record["id"]]

    assert run_cli("models", "promote", f"digits:{weak}", "gate-test").returncode == 0
    # --data evaluates the side without an evaluation on it (the good one), then the threshold refuses it
    refused = run_cli("models", "promote", f"digits:{good}", "gate-test", "--gate", "--min", "accuracy=0.999",
                      "--data", holdout, timeout=300)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "accuracy" in refused.stderr and "< 0.999 (--min)" in refused.stderr, refused.stderr
    assert reg.aliases("digits")["gate-test"] == weak
    best = gate.latest_on(reg, reg.get(f"digits:{good}"), record["dataset"]["fingerprint"])
    assert best is not None and best["metrics"]["accuracy"] > record["metrics"]["accuracy"], (best, record)

    passed = run_cli("models", "promote", f"digits:{good}", "gate-test", "--gate", "--json")
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["moved"] and reg.aliases("digits")["gate-test"] == good

    worse = run_cli("models", "promote", f"digits:{weak}", "gate-test", "--gate")
    assert worse.returncode == 1 and "does not beat" in worse.stderr, worse.stdout + worse.stderr
    assert f"{record['metrics']['accuracy']:.6g}" in worse.stderr and f"{best['metrics']['accuracy']:.6g}" in worse.stderr
    assert reg.aliases("digits")["gate-test"] == good
    assert run_cli("models", "unalias", "digits", "gate-test").returncode == 0
