"""`atoll runs delete` and `atoll runs prune` (issue 32.11: storage only grew): on run and sweep folders laid out
on disk as Ray Train and Tune leave them, no cluster. Delete removes only what it names; prune keeps a finished
run's best checkpoint, a finished sweep's results (and its best checkpoint while no version comes from it), and
never touches what is incomplete."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from atoll import runs
from atoll.cli.runs import size_text
from conftest import REPO, invoke

SWEEP_STATE = "experiment_state-2026-01-01_00-00-00.json"




def write_checkpoint(folder: Path, *, epoch: int, epochs: int, val_accuracy: float, run_name: str = "run",
                     real: bool = False) -> Path:
    """A checkpoint_* folder as the training loop writes one: weights, optimiser state, atoll.json. ``real``:
    the demo MLP's untrained weights and a whole atoll.json (one that registers); else filler bytes."""
    from atoll import config, train
    from atoll.specs import TrainSpec

    spec = config.load_file(TrainSpec, REPO / "jobs/configs/train.yaml", [f"epochs={epochs}"])
    folder.mkdir(parents=True)
    history = [{"epoch": e, "val_loss": 2.3, "val_accuracy": val_accuracy} for e in range(epoch + 1)]
    meta: dict[str, Any] = {"epoch": epoch, "history": history, "metrics": history[-1],
                            "spec": spec.model_dump(mode="json"), "run_name": run_name}
    if real:
        from atoll import data, models
        from safetensors.torch import save_file

        pre = data.Preprocessor(features=[f"px{i}" for i in range(64)], label="label", mean=[0.0] * 64,
                                std=[1.0] * 64, classes=list(range(10)))
        save_file(models.build(spec.model.type, pre.input_dim, pre.num_classes, spec.model.params).state_dict(),
                  folder / train.MODEL_FILE)
        meta.update(preprocess=pre.to_dict(), input_schema=train.input_schema(spec, pre))
    else:
        (folder / train.MODEL_FILE).write_bytes(b"w" * 1000)
    (folder / "optim.pt").write_bytes(b"o" * 2000)
    (folder / train.META_FILE).write_text(json.dumps(meta))
    return folder


def write_run(storage: Path, name: str, scores: list[float], epochs: int | None = None) -> Path:
    """A run of ``epochs`` epochs (default: as many as ``scores``) that checkpointed one epoch per score."""
    run = storage / "runs" / name
    for epoch, score in enumerate(scores):
        write_checkpoint(run / f"checkpoint_2026-01-01_00-00-0{epoch}.000000", epoch=epoch,
                         epochs=epochs or len(scores), val_accuracy=score, run_name=name)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    return run


def write_sweep(storage: Path, name: str, trials: dict[str, list[float]], *, finished: bool = True,
                real_best: bool = False) -> Path:
    """A Tune experiment: one trial folder per trial id (its checkpoints, one per score), Tune's state, and
    when ``finished`` the results Atoll writes at the end (best trial first)."""
    sweep = storage / "sweeps" / name
    sweep.mkdir(parents=True)
    best = max(trials, key=lambda t: max(trials[t]))
    for index, (trial_id, scores) in enumerate(trials.items()):
        folder = sweep / f"run_trial_{trial_id}_{index}_optimizer_lr=0.0100_2026-01-01_00-00-00"
        for epoch, score in enumerate(scores):
            write_checkpoint(folder / f"checkpoint_{epoch:06d}", epoch=epoch, epochs=3, val_accuracy=score,
                             run_name=f"{name}-{trial_id}",
                             real=real_best and trial_id == best and score == max(scores))
        (folder / "result.json").write_text(json.dumps({"trial_id": trial_id}) + "\n")
    (sweep / SWEEP_STATE).write_text("{}")
    (sweep / "tuner.pkl").write_bytes(b"tuner")
    if finished:
        ranked = sorted(trials, key=lambda t: -max(trials[t]))
        lines = ["trial_id,status,epochs,best_val_accuracy,best_epoch"]
        lines += [f"{t},completed,{len(trials[t])},{max(trials[t])},{trials[t].index(max(trials[t]))}" for t in ranked]
        (sweep / "results.csv").write_text("\n".join(lines) + "\n")
        (sweep / "results.parquet").write_bytes(b"PAR1")
        (sweep / "sweep.png").write_bytes(b"\x89PNG")
        past = (sweep / SWEEP_STATE).stat().st_mtime - 60
        os.utime(sweep / SWEEP_STATE, (past, past))  # the results are newer than Tune's last state: finished
    return sweep


def checkpoints(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("checkpoint_*") if p.is_dir())


def test_delete_removes_only_the_named_run_or_sweep(storage: Path) -> None:
    write_run(storage, "keep-me", [0.5])
    write_run(storage, "old", [0.5, 0.6])
    write_sweep(storage, "wide", {"1a2b3_00000": [0.6], "1a2b3_00001": [0.7]}, finished=False)
    write_run(storage, "wide-1a2b3_00000", [0.6])  # a nested trial of sweep wide: its Ray Train run
    write_run(storage, "wide-lr3", [0.5])  # a run of the user's that only starts like one

    answered_no = invoke("runs", "delete", "old", input="n\n")
    assert answered_no.exit_code != 0 and (storage / "runs" / "old").is_dir()
    assert "runs/old" in answered_no.output  # the prompt showed what would go

    result = invoke("runs", "delete", "old", "--yes")
    assert result.exit_code == 0, result.output
    assert "Deleted run old: freed" in result.output
    assert not (storage / "runs" / "old").exists()
    assert (storage / "runs" / "keep-me").is_dir() and (storage / "sweeps" / "wide").is_dir()

    sweep = runs.delete(str(storage), "wide")
    assert {r["path"] for r in sweep["removed"]} == {str(storage / "sweeps" / "wide"),
                                                     str(storage / "runs" / "wide-1a2b3_00000")}
    assert sweep["bytes"] > 0 and not (storage / "sweeps" / "wide").exists()
    assert sorted(p.name for p in (storage / "runs").iterdir()) == ["keep-me", "wide-lr3"]


def test_delete_asks_which_when_a_run_and_a_sweep_share_the_name(storage: Path) -> None:
    write_run(storage, "both", [0.5])
    write_sweep(storage, "both", {"1a2b3_00000": [0.6]})
    ambiguous = invoke("runs", "delete", "both", "--yes")
    assert ambiguous.exit_code != 0 and "--run or --sweep" in str(ambiguous.exception)
    assert (storage / "runs" / "both").is_dir() and (storage / "sweeps" / "both").is_dir()
    assert invoke("runs", "delete", "both", "--sweep", "--yes").exit_code == 0
    assert (storage / "runs" / "both").is_dir() and not (storage / "sweeps" / "both").exists()


@pytest.mark.parametrize("argv", [["delete", "../x", "--yes"], ["prune", "../x", "--yes"],
                                  ["delete", "nosuch", "--yes"]])
def test_a_bad_or_unknown_name_is_one_line_and_removes_nothing(storage: Path, capsys, argv: list[str]) -> None:
    from atoll import cli

    write_run(storage, "mine", [0.5])
    with pytest.raises(SystemExit) as exited:  # the real entry point: its error boundary prints the line
        cli.main(["runs", *argv])
    out, err = capsys.readouterr()
    assert exited.value.code != 0
    assert err.count("\n") == 1 and "Traceback" not in out + err, err
    assert ("invalid run or sweep name '../x'" in err) if "../x" in argv else ("Existing runs: mine." in err)
    assert checkpoints(storage / "runs" / "mine") == ["checkpoint_2026-01-01_00-00-00.000000"]


def test_prune_keeps_the_best_checkpoint_of_a_finished_run_and_leaves_an_incomplete_one(storage: Path) -> None:
    done = write_run(storage, "done", [0.5, 0.9, 0.7])  # best: epoch 1, not the latest
    (done / "checkpoint_2026-01-01_00-00-09.000000").mkdir()  # half-written, no atoll.json: garbage now
    cut = write_run(storage, "cut", [0.8, 0.6], epochs=5)  # interrupted after 2 of 5 epochs
    before = checkpoints(cut)
    doomed = [done / f"checkpoint_2026-01-01_00-00-0{e}.000000" for e in (0, 2)]
    freed = sum(f.stat().st_size for c in doomed for f in c.iterdir())

    result = invoke("runs", "prune", "--yes", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert checkpoints(done) == ["checkpoint_2026-01-01_00-00-01.000000"]
    assert checkpoints(cut) == before
    assert "Skipped run cut: incomplete (2/5 epochs)" in result.output
    lines = result.output.splitlines()
    assert any(str(done / "checkpoint_2026-01-01_00-00-02.000000") in line for line in lines)  # never wrapped
    assert f"Freed {size_text(freed)} (3 folder(s))." in result.output

    row = {r["name"]: r for r in runs.list_runs(str(storage))}["done"]
    assert (row["state"], row["epochs_done"], row["metrics"]["val_accuracy"]) == (runs.FINISHED, 3, 0.9)
    assert row["checkpoint"] == str(done / "checkpoint_2026-01-01_00-00-01.000000")
    again = runs.prune(str(storage))
    assert again["removed"] == [] and again["bytes"] == 0


def test_dry_run_removes_nothing_and_says_what_it_would(storage: Path) -> None:
    run = write_run(storage, "done", [0.9, 0.5])
    sweep = write_sweep(storage, "wide", {"1a2b3_00000": [0.6, 0.7], "1a2b3_00001": [0.4]})
    before = checkpoints(storage)

    result = invoke("runs", "prune", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    planned = json.loads(result.stdout)
    assert planned["dry_run"] and checkpoints(storage) == before
    assert {r["path"] for r in planned["removed"]} >= {str(run / "checkpoint_2026-01-01_00-00-01.000000")}
    assert any(r["path"].startswith(str(sweep)) for r in planned["removed"])
    assert planned["bytes"] == sum(r["bytes"] for r in planned["removed"]) > 0
    shown = invoke("runs", "prune", "--dry-run")
    assert "would remove" in shown.output and "Would free" in shown.output and checkpoints(storage) == before
    assert not (run / runs.PRUNED_FILE).exists()


def test_prune_of_a_registered_sweep_removes_every_trial_checkpoint_and_keeps_its_results(storage: Path) -> None:
    trials = {"1a2b3_00000": [0.6, 0.95, 0.9], "1a2b3_00001": [0.4]}
    sweep = write_sweep(storage, "wide", trials, real_best=True)
    best = next(sweep.glob("run_trial_1a2b3_00000_*")) / "checkpoint_000001"
    runs.register_checkpoint(str(storage), "digits", best,
                             lineage={"sweep": "wide", "trial_id": "1a2b3_00000", "epoch": 1})
    going = write_sweep(storage, "going", {"9f8e7_00000": [0.5]}, finished=False)

    result = invoke("runs", "prune", "wide", "--yes")
    assert result.exit_code == 0, result.output
    assert checkpoints(sweep) == []
    assert {p.name for p in sweep.iterdir() if p.is_file()} == {"results.csv", "results.parquet", "sweep.png",
                                                                 SWEEP_STATE, "tuner.pkl"}
    assert all((t / "result.json").is_file() for t in sweep.glob("run_trial_*"))
    listed = {r["name"]: r for r in runs.list_sweeps(str(storage))}["wide"]
    assert (listed["state"], listed["trials"], listed["best_trial"]) == (runs.FINISHED, 2, "1a2b3_00000")

    everything = runs.prune(str(storage))
    assert checkpoints(going) == ["run_trial_9f8e7_00000_0_optimizer_lr=0.0100_2026-01-01_00-00-00/checkpoint_000000"]
    assert [(s["kind"], s["name"], s["state"]) for s in everything["skipped"]] == [("sweep", "going", runs.INCOMPLETE)]


def test_prune_keeps_the_best_trials_checkpoint_while_no_version_comes_from_it(storage: Path) -> None:
    sweep = write_sweep(storage, "unregistered", {"1a2b3_00000": [0.6, 0.95, 0.9], "1a2b3_00001": [0.4]})
    result = runs.prune(str(storage), "unregistered")
    kept = f"{next(sweep.glob('run_trial_1a2b3_00000_*')).name}/checkpoint_000001"
    assert checkpoints(sweep) == [kept]
    assert [k["path"] for k in result["kept"]] == [str(sweep / kept)]
    assert len(result["removed"]) == 3
