"""The `atoll` command line itself: the error boundary for usage errors (whatever click typer brings), the
dependency ranges, one meaning per flag, the commands that wrap registry/run/Serve functions, listings that
never cut an id, and what Ctrl-C does to a followed job. In-process (typer's CliRunner, or `main()`) unless
the process or a cluster is the point."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from atoll import cli, jobs, runs
from atoll.cli import common as cli_common
from atoll.cli import errors as cli_errors
from atoll.cli.jobs import _skipping, jobs_table
from atoll.cli.runs import runs_table
from atoll.cli.serve import deploy_summary
from atoll.errors import AtollError, ConfigError, RegistryError
from atoll.serving import endpoints
from atoll.specs import ServeSettings
from conftest import APP_KEY, ATOLL, REPO, invoke, run_cli
from rich.console import Console

KEY = "cli-test-key-0123456789abcdef"  # long enough for the key check




def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`atoll ARGV` through the real entry point, in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


# ------------------------------------------------------------------------------------------------
# Item 12: usage errors are one line with the closest valid name, exit 2; the dependency ranges


@pytest.mark.parametrize(("argv", "expected"), [
    (["models", "lst"], "atoll models: no such command 'lst'; did you mean 'list'?"),
    (["modles", "list"], "atoll: no such command 'modles'; did you mean 'models'?"),
    (["train", "--resum", "x"], "atoll train: no such option --resum; did you mean --resume?"),
    (["jobs", "logs", "raysubmit_1", "--tial", "3"], "did you mean --tail?"),
    (["models", "frobnicate"], "no such command 'frobnicate'; commands: list, show, promote"),
    (["train", "--bogus"], "atoll train: no such option --bogus (see `atoll train --help`)"),
    (["models", "show"], "atoll models show: Missing argument"),
    (["submit", "--wiat", "--", "python", "-c", "1"], "atoll submit: no such option --wiat; did you mean --wait?"),
    (["tune", "--resume"], "atoll tune: Option '--resume' requires an argument"),  # raised without its context
    (["quickstart", "--task", "txt"], "--task 'txt': choose one of tabular, text, image, generate."),  # before any cluster
])
def test_a_usage_error_is_one_line_with_the_closest_name_and_exit_2(capsys, argv, expected) -> None:
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1, err  # one line, nothing else: no traceback, no usage block
    assert "Traceback" not in out + err and "internal error" not in err


def test_plain_click_usage_errors_get_the_same_line() -> None:
    """typer 0.29 raises its vendored click's exceptions; click's own (older typers, click-based code) must
    read the same."""
    group = click.Group("atoll", commands=[click.Command("list"), click.Command("show")])
    ctx = click.Context(group, info_name="atoll")
    typo = click.UsageError("No such command 'lst'.", ctx)
    assert isinstance(typo, cli_errors.USAGE_ERRORS)
    assert cli_errors.usage_line(typo) == "atoll: no such command 'lst'; did you mean 'list'? (see `atoll --help`)"
    command = click.Command("train", params=[click.Option(["--resume"]), click.Option(["--set"])])
    option = click.exceptions.NoSuchOption("--resum", ctx=click.Context(command, info_name="train"))
    assert "no such option --resum; did you mean --resume?" in cli_errors.usage_line(option)
    assert len(cli_errors.USAGE_ERRORS) == 2  # typer's vendored click and click itself


def test_version_prints_atoll_and_the_ray_it_runs_on(capsys) -> None:
    code, out, _ = run_main(capsys, "--version")
    assert code == 0
    assert f"atoll {version('atoll')}" in out and f"ray {version('ray')}" in out


def test_debug_is_in_the_help_and_works_after_a_command(capsys, storage) -> None:
    assert "--debug" in invoke("--help").output
    args, debug = cli._split_debug(["submit", "--debug", "--", "python", "job.py", "--debug"])
    assert (args, debug) == (["submit", "--", "python", "job.py", "--debug"], True)  # the job's own stays
    code, _, err = run_main(capsys, "models", "show", "nosuch")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(RegistryError):  # --debug: the real exception, with its traceback
        cli.main(["models", "show", "nosuch", "--debug"])


#: What makes a start-up slow; the CLI's modules import them (through the library) inside their commands.
HEAVY = ("ray", "torch", "pandas", "pyarrow", "httpx", "pydantic")


def test_the_cli_and_its_help_import_no_heavy_library() -> None:
    """`atoll --help` starts fast: importing atoll.cli and printing the help import none of HEAVY (in a fresh
    interpreter: this one's collection has imported them all)."""
    code = ("import json, sys\nimport atoll.cli\n"
            "try:\n    atoll.cli.main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Commands" in out.stdout
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["test"]


@pytest.mark.parametrize("requirement", _requirements())
def test_every_dependency_is_pinned_to_a_range_that_holds_what_is_installed(requirement: str) -> None:
    from packaging.requirements import Requirement

    req = Requirement(requirement)
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req}: no upper bound"
    installed = version(req.name)
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req.specifier}"


# ------------------------------------------------------------------------------------------------
# Item 17: one meaning per flag


def _commands(command: Any, path: str = "atoll") -> list[tuple[str, Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, f"{path} {name}")
    return found


def _options(name: str) -> dict[str, Any]:
    """Every option called ``name`` in the command tree, by command path (typer's click or click's)."""
    tree = typer.main.get_command(cli.app)
    return {path: p for path, cmd in _commands(tree) for p in cmd.params
            if p.param_type_name == "option" and name in (*p.opts, *p.secondary_opts)}


def test_each_flag_means_one_thing_across_every_command() -> None:
    assert {p.opts[0] for p in _options("-f").values()} == {"--follow"}
    assert all(p.is_flag for p in _options("--json").values())  # --json prints JSON; never takes a body
    assert all(p.opts == ["--config", "-c"] and "cluster.yaml" in p.help for p in _options("-c").values())
    assert all(p.help.startswith(cli_common.ALL_HELP) for p in _options("--all").values())
    assert {"atoll status", "atoll submit", "atoll train", "atoll tune", "atoll query", "atoll runs list",
            "atoll serve logs", "atoll models register"} <= set(_options("--config"))
    resume, name = _options("--resume"), _options("--name")
    assert set(resume) == {"atoll train", "atoll tune"} <= set(name)
    assert not any(p.is_flag for p in resume.values())  # --resume NAME in both
    assert "--run-name" in name["atoll train"].secondary_opts + name["atoll train"].opts
    assert _options("--body")["atoll query"].opts == ["--body", "-d"]


def test_train_takes_its_spec_as_an_argument_and_c_as_cluster_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text((REPO / "cluster.yaml").read_text() + "\nmax_workers: ten\n")
    before = os.environ.get("ATOLL_CLUSTER_CONFIG")
    result = invoke("train", str(REPO / "jobs/configs/train.yaml"), "-c", str(bad), "--no-wait")
    # The spec check reads the cluster.yaml given with -c (and fails on it), before anything is submitted.
    assert isinstance(result.exception, ConfigError), result.output
    assert str(bad) in str(result.exception) and "max_workers" in str(result.exception)
    assert os.environ.get("ATOLL_CLUSTER_CONFIG") == before
    missing = invoke("tune", str(tmp_path / "nope.yaml"), "--no-wait")
    assert isinstance(missing.exception, ConfigError) and "nope.yaml" in str(missing.exception)


def test_train_and_tune_refuse_two_names_or_a_flag_as_the_name() -> None:
    result = invoke("tune", "--resume", "a", "--set", "name=b", "--no-wait")
    assert isinstance(result.exception, ConfigError) and "two names for the sweep: a, b" in str(result.exception)
    result = invoke("train", "--resume", "r1", "--name", "r2", "--no-wait")
    assert isinstance(result.exception, ConfigError) and "two names for the run" in str(result.exception)
    result = invoke("tune", "--resume", "--json")  # the flag after it is no name
    assert isinstance(result.exception, ConfigError) and "NAME" in str(result.exception)


@pytest.mark.parametrize("argv", [["train", "--name", "../registry/x"], ["train", "--run-name", "/tmp/abs"],
                                  ["train", "--resume", "runs/../../x"], ["tune", "--name", "../x"],
                                  ["tune", "--resume", "/abs"]])
def test_a_run_or_sweep_name_that_is_not_one_folder_is_refused_before_submitting(argv, monkeypatch) -> None:
    monkeypatch.setenv("ATOLL_ADDRESS", "http://127.0.0.1:1")  # were anything submitted: a different error
    result = invoke(*argv, "--no-wait")
    assert isinstance(result.exception, ConfigError), result.output
    assert str(result.exception).startswith(f"invalid {argv[0] == 'train' and 'run' or 'sweep'} name {argv[2]!r}: "
                                            "use 1 to 64 letters")


def test_the_library_fit_checks_the_run_name_too(monkeypatch) -> None:
    from atoll import api

    monkeypatch.setenv("ATOLL_ADDRESS", "http://127.0.0.1:1")
    for kw in ({"name": "../registry/x"}, {"resume": "/abs/run"}):
        with pytest.raises(ConfigError, match=r"^invalid run name"):
            api.fit(REPO / "jobs/configs/train.yaml", wait=False, **kw)


def test_query_takes_its_body_with_d_and_json_only_prints_json() -> None:
    bad = invoke("query", "digits", "-d", "{not json", "--json")
    assert isinstance(bad.exception, ConfigError) and "--body: not valid JSON" in str(bad.exception)
    neither = invoke("query", "digits")
    assert isinstance(neither.exception, ConfigError) and "-d/--body" in str(neither.exception)


# ------------------------------------------------------------------------------------------------
# Item 18: the missing commands, the printed links, listings that keep ids whole


def write_checkpoint(folder: Path, *, epoch: int = 0, epochs: int = 1, val_accuracy: float = 0.1) -> Path:
    """A checkpoint as the training loop writes one (untrained weights of the demo's MLP, 64 pixels → 10
    digits): what a run trained on another cluster leaves in its checkpoint_* folders."""
    from atoll import config, data, models, train
    from atoll.specs import TrainSpec

    spec = config.load_file(TrainSpec, REPO / "jobs/configs/train.yaml", [f"epochs={epochs}"])
    pre = data.Preprocessor(features=[f"px{i}" for i in range(64)], label="label", mean=[0.0] * 64,
                            std=[1.0] * 64, classes=list(range(10)))
    model = models.build(spec.model.type, pre.input_dim, pre.num_classes, spec.model.params)
    folder.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(model.state_dict(), folder / train.MODEL_FILE)
    history = [{"epoch": e, "train_loss": 2.3, "val_loss": 2.3, "train_accuracy": 0.1, "val_accuracy": val_accuracy}
               for e in range(epoch + 1)]
    meta = {"epoch": epoch, "history": history, "metrics": history[-1], "spec": spec.model_dump(mode="json"),
            "preprocess": pre.to_dict(), "input_schema": train.input_schema(spec, pre), "run_name": "elsewhere"}
    (folder / train.META_FILE).write_text(json.dumps(meta))
    return folder


def test_register_download_and_unalias_through_the_cli(storage: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "elsewhere")
    result = invoke("models", "register", "outside", str(ckpt), "--metrics", '{"val_accuracy": 0.5}', "--json")
    assert result.exit_code == 0, result.output
    registered = json.loads(result.stdout)
    assert (registered["name"], registered["version"]) == ("outside", 1)
    assert registered["metrics"] == {"val_accuracy": 0.5}
    assert registered["lineage"]["registered_from"] == str(ckpt.resolve())

    out = tmp_path / "copy"
    result = invoke("models", "download", "outside:1", "-o", str(out))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert digest == manifest["files"]["model.safetensors"]["sha256"]
    again = invoke("models", "download", "outside:1", "-o", str(out))
    assert isinstance(again.exception, ConfigError) and "not an empty folder" in str(again.exception)

    assert invoke("models", "promote", "outside:1", "staging").exit_code == 0
    result = invoke("models", "unalias", "outside", "staging")
    assert result.exit_code == 0 and "pointed at outside:1" in result.output
    assert json.loads(invoke("models", "list", "--json").stdout)[0]["aliases"] == {}
    gone = invoke("models", "unalias", "outside", "staging")
    assert isinstance(gone.exception, RegistryError)


def test_register_refuses_a_folder_that_is_not_a_whole_checkpoint(storage: Path, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "half")
    (ckpt / "atoll.json").unlink()
    result = invoke("models", "register", "outside", str(ckpt))
    assert isinstance(result.exception, RegistryError) and "has no atoll.json" in str(result.exception)
    (ckpt / "atoll.json").write_text(json.dumps({"epoch": 0}))
    result = invoke("models", "register", "outside", str(ckpt))
    assert isinstance(result.exception, RegistryError) and "lacks spec, preprocess" in str(result.exception)
    assert not (storage / "registry" / "outside").exists()


def test_runs_list_reads_the_state_of_runs_and_sweeps_from_disk(storage: Path) -> None:
    write_checkpoint(storage / "runs" / "done" / "checkpoint_2026-01-01_10-00-00.000000", epoch=2, epochs=3,
                     val_accuracy=0.9)
    write_checkpoint(storage / "runs" / "cut" / "checkpoint_2026-01-01_10-00-00.000000", epoch=0, epochs=3)
    (storage / "runs" / "early").mkdir()
    sweeps = storage / "sweeps"
    (sweeps / "over" / "trial_1").mkdir(parents=True)
    (sweeps / "over" / "experiment_state-2026.json").write_text("{}")
    (sweeps / "over" / "results.csv").write_text("trial_id,status,epochs,best_val_accuracy,best_epoch\n"
                                                 "t1,completed,3,0.97,2\nt2,stopped early,1,0.5,0\n")
    (sweeps / "going" / "trial_1").mkdir(parents=True)
    (sweeps / "going" / "experiment_state-2026.json").write_text("{}")

    result = invoke("runs", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {n: (r["kind"], r["state"]) for n, r in rows.items()} == {
        "done": ("run", runs.FINISHED), "cut": ("run", runs.INCOMPLETE), "early": ("run", runs.EMPTY),
        "over": ("sweep", runs.FINISHED), "going": ("sweep", runs.INCOMPLETE)}
    assert (rows["done"]["epochs_done"], rows["done"]["epochs"], rows["cut"]["epochs_done"]) == (3, 3, 1)
    assert rows["done"]["metrics"]["val_accuracy"] == 0.9
    assert (rows["over"]["trials"], rows["over"]["best_trial"], rows["over"]["best"]) == (2, "t1", 0.97)
    table = invoke("runs", "list")
    assert table.exit_code == 0 and "incomplete" in table.output


def _render(table, width: int = 80) -> str:
    out = Console(width=width, file=io.StringIO(), color_system=None)
    out.print(table)
    return out.file.getvalue()


def test_listings_keep_ids_and_names_whole_at_80_columns() -> None:
    ids = ["raysubmit_U6MntR7Hn2cGx3YzAbCd", "atoll-train-20260101-120000-ab12"]
    rows = [{"id": i, "status": "SUCCEEDED", "start_time": 1767268800000,
             "entrypoint": "python -m atoll.train -c jobs/configs/train.yaml --set epochs=3 --set optimizer.lr=0.01"}
            for i in ids]
    text = _render(jobs_table(rows, width=80))
    assert all(i in text for i in ids)  # `atoll jobs list | grep ID` finds it
    assert "…" in text and max(len(line) for line in text.splitlines()) <= 80  # the entrypoint is cut instead
    name = "digits-with-a-long-run-name-20260101-120000-ab12"
    run = {"kind": "run", "name": name, "state": runs.INCOMPLETE, "updated": "2026-01-01T12:00:00+00:00",
           "epochs_done": 3, "epochs": 10, "metrics": {"val_accuracy": 0.91234}}
    assert name in _render(runs_table([run], width=80))


MARKUP = "[/x] [bold]not bold"  # a closing tag that opens nothing: rich's MarkupError, were it read as markup


def test_listings_print_their_cells_as_they_are() -> None:
    job = {"id": "raysubmit_1", "status": "FAILED", "start_time": 1767268800000, "entrypoint": f"echo '{MARKUP}'"}
    text = _render(jobs_table([job], width=120), width=120)
    assert f"echo '{MARKUP}'" in text and "FAILED" in text
    assert MARKUP in _render(cli_common.listing("t", ["a"], [[MARKUP]]))


def test_a_jobs_error_events_and_trials_are_printed_as_they_are(capsys) -> None:
    from atoll import events, progress
    from rich.live import Live
    from rich.progress import Progress

    events.emit("error", message=f"ValueError: {MARKUP}")
    events.emit("sweep_start", sweep="s", trials=1, scheduler="asha", algorithm="random", metric="val_accuracy")
    events.emit("trial", trial="t_1", config={"model.params.act": "[/x]"}, epoch=0, epochs=2, value=0.5,
                status=MARKUP)
    logged = events.parse_events(capsys.readouterr().out)
    out = Console(file=io.StringIO(), width=200, color_system=None)
    bar = Progress(console=out)
    with Live(console=out, auto_refresh=False) as live:
        train, sweep = progress.TrainProgress(bar), progress.SweepView(live)
        for event in logged:
            train(event)
            sweep(event)
        out.print(sweep.table())
    printed = out.file.getvalue()
    assert printed.count(f"error: ValueError: {MARKUP}") == 2  # the training bar's and the sweep's
    assert 'act="[/x]"' in printed and f"│ {MARKUP} │" in printed  # a trial's config and status


def test_one_follower_hands_each_event_once_in_order_to_the_library_and_the_live_views(capsys, monkeypatch):
    """`atoll train` and atoll.fit follow a job alike (jobs.follow_events): Ray may forward a line twice, cut one
    between chunks, and the follower reads the log's tail again at the end, yet each event reaches the view
    once, in order."""
    from atoll import api, events, progress
    from atoll.errors import JobFailedError

    events.emit("start", workers=2, use_gpu=False, backend="gloo", rows=100, features=4, classes=3, epochs=2)
    for epoch in range(2):
        events.emit("epoch", epoch=epoch, train_loss=1.0, val_loss=0.5, val_accuracy=0.9, samples_per_s=10.0)
    events.emit("registered", name="m", version=7, metrics={})
    lines = capsys.readouterr().out.splitlines(keepends=True)
    # The first line forwarded twice, the second cut in two by the chunking, the whole tail read again at the end.
    chunks = [f"(RayTrainWorker pid=1) {lines[0]}", lines[0] + lines[1][:20], lines[1][20:] + "".join(lines[2:]),
              "".join(lines)]
    status = "SUCCEEDED"

    def follow(job_id, on_text, info=None):  # jobs.follow without a cluster: the log in chunks, then the end
        for chunk in chunks:
            on_text(chunk)
        return {"id": job_id, "status": status}

    monkeypatch.setattr(jobs, "follow", follow)
    details, followed = progress.follow_training("j")
    assert details["status"] == "SUCCEEDED"
    assert [e["event"] for e in followed] == ["start", "epoch", "epoch", "registered"]
    assert [e["id"] for e in followed] == [e["id"] for e in events.parse_events("".join(lines))]
    assert capsys.readouterr().err.count("Training on 2 CPU workers (gloo), 100 rows x 4 features, 3 classes") == 1
    assert jobs.last_event(followed, "registered")["version"] == 7 and jobs.last_event(followed, "finished") is None
    handed: list[dict] = []
    assert api._follow("j", "train", handed.append) == handed == followed
    status = "FAILED"
    with pytest.raises(JobFailedError, match="train job j FAILED"):
        api._follow("j", "train", None)


def test_the_quickstarts_last_lines_keep_paths_urls_and_commands_whole_at_80_columns(tmp_path: Path) -> None:
    """In a pipe or CI (80 columns) its closing box cut the sweep plot's path (…/sw + eep.png) and the curl
    command in two; each is now printed whole on its line."""
    storage = tmp_path / "a-team-share" / "projects" / "handwritten-digits-classification" / "atoll-storage"
    plot = f"{storage}/sweeps/quickstart-20260101-120000/sweep.png"
    url = "http://127.0.0.1:8000/digits"
    out = {"timings_s": {"total": 93.0}, "sweep": {"plot": plot},
           "deployed": {"app": "digits", "model": "digits", "url": url, "playground": f"{url}/ui",
                        "gallery": "http://127.0.0.1:8000/"}}
    code = ("import json, sys\nfrom atoll import cluster, quickstart\n"
            "info = cluster.ClusterInfo(mode='local', dashboard_url='http://127.0.0.1:8265')\n"
            "quickstart._finish(json.loads(sys.argv[1]), info, cluster.load_spec(), quickstart.DEMOS['tabular'],"
            " stopped=False, reused_and_kept=False)\n")
    env = {**os.environ, "COLUMNS": "80", "ATOLL_STORAGE": str(storage), "ATOLL_API_KEY": KEY}
    result = subprocess.run([sys.executable, "-c", code, json.dumps(out)], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    curl = (f"curl -s {url}/predict -H 'Content-Type: application/json' -H \"Authorization: Bearer $ATOLL_API_KEY\" "
            f"-d @rows.json")
    for whole in (plot, curl, f"{url}/openapi.json", f"{url}/ui", f"{storage}/registry/digits/",
                  "atoll status | atoll models list | atoll models show digits@production"):
        assert any(whole in line for line in lines), f"{whole!r} is cut in:\n{result.stdout}"


def test_a_setting_no_app_may_override_is_refused_before_any_cluster_is_asked(tmp_path, monkeypatch) -> None:
    """The per-app check lives in endpoints.deploy: library callers get it too, and it comes first (with no
    cluster recorded, a later check would fail with "no cluster is up" instead)."""
    monkeypatch.setenv("ATOLL_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="--set max_batchsize: not a per-app Serve setting; choose from "
                                          "min_replicas, max_replicas"):
        endpoints.deploy("digits:1", settings={"max_batchsize": 64})
    result = invoke("serve", "deploy", "digits:1", "--set", "max_batchsize=64")
    assert isinstance(result.exception, ConfigError) and "not a per-app Serve setting" in str(result.exception)
    # A known setting's bad value too: one line naming it and its fix, never pydantic's traceback.
    with pytest.raises(ConfigError, match=r"^--set: upscale_delay_s: Input should be greater than or equal to 0 "
                                          r"\(got -1\); e.g. upscale_delay_s: 30.0$"):
        endpoints.deploy("digits:1", settings={"upscale_delay_s": -1})
    with pytest.raises(ConfigError, match=r"^--set: max_batch_size: .*integer.* \(got 'x'\)"):
        endpoints.deploy_canary("digits:2", app="digits", percent=10, settings={"max_batch_size": "x"})


def test_deploy_prints_live_links_and_the_key_header_by_name(monkeypatch) -> None:
    result = {"app": "digits", "model": "digits", "version": 3, "requested": "digits@production",
              "url": "http://127.0.0.1:8000/digits", "playground": "http://127.0.0.1:8000/digits/ui",
              "gallery": "http://127.0.0.1:8000/", "status": "RUNNING"}
    monkeypatch.setenv("ATOLL_API_KEY", KEY)
    keyed = deploy_summary(result, endpoints.curl_auth(ServeSettings()))
    assert '-H "Authorization: Bearer $ATOLL_API_KEY"' in keyed and KEY not in keyed
    assert "/docs" not in keyed and "http://127.0.0.1:8000/digits/openapi.json" in keyed
    monkeypatch.delenv("ATOLL_API_KEY")
    assert "Authorization" not in deploy_summary(result, endpoints.curl_auth(ServeSettings()))


def test_jobs_logs_tail_then_follow_skips_what_it_showed() -> None:
    got: list[str] = []
    take = _skipping(7, got.append)
    for chunk in ("line 1\n", "line", " 2\nline 3\n"):  # the stream starts again at the beginning
        take(chunk)
    assert "".join(got) == "line 2\nline 3\n"


# ------------------------------------------------------------------------------------------------
# On the session's cluster: Ctrl-C while following, `jobs logs --tail`, `serve logs`, the deploy output


@pytest.mark.cluster
def test_ctrl_c_while_following_leaves_the_job_running_and_says_how_to_stop_it(ray_cluster) -> None:
    job_id = f"t-cli-ctrl-c-{os.getpid()}"
    code = "import time\nfor i in range(3): print(f'line {i}', flush=True)\ntime.sleep(120)"
    follower = subprocess.Popen([ATOLL, "submit", "--wait", "--id", job_id, "--", "python", "-c", code], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (_submitted(job_id) and "line 2" in jobs.logs(job_id)):
            assert time.monotonic() < deadline and follower.poll() is None, follower.communicate()
            time.sleep(0.5)
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 130, out + err
        assert f"job {job_id} keeps running" in err and f"atoll jobs stop {job_id}" in err
        assert "Traceback" not in out + err
        assert jobs.status(job_id)["status"] == "RUNNING"
        tail = subprocess.run([ATOLL, "jobs", "logs", job_id, "--tail", "1"], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False)
        assert tail.stdout == "line 2\n", tail.stdout + tail.stderr
    finally:
        follower.kill()
        if _submitted(job_id):
            jobs.stop(job_id)


def _submitted(job_id: str) -> bool:
    return any(j["id"] == job_id for j in jobs.list_jobs())


@pytest.mark.cluster
def test_a_job_with_brackets_in_its_command_and_output_prints_as_it_is(ray_cluster) -> None:
    """The issue's own steps on the real Jobs API: `atoll submit -- echo '[/x]'`, then `atoll jobs status ID`
    (which was "internal error", rich's MarkupError), `jobs list` and `jobs logs`."""
    job_id = f"t-cli-markup-{os.getpid()}"
    submitted = subprocess.run([ATOLL, "submit", "--wait", "--id", job_id, "--", "echo", MARKUP], cwd=REPO,
                               capture_output=True, text=True, timeout=300, check=False)
    assert submitted.returncode == 0 and "Traceback" not in submitted.stderr, submitted.stdout + submitted.stderr
    for args in (["jobs", "status", job_id], ["jobs", "list"], ["jobs", "logs", job_id]):
        shown = subprocess.run([ATOLL, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                               env={**os.environ, "COLUMNS": "200"})
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, (args, shown.stdout + shown.stderr)
        assert MARKUP in shown.stdout, (args, shown.stdout)


@pytest.mark.cluster
def test_serve_logs_show_the_replicas_of_an_app_deployed_with_a_key(keyed_app) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {APP_KEY}"}
    printed, url = keyed_app["output"], keyed_app["url"]
    assert '-H "Authorization: Bearer $ATOLL_API_KEY"' in printed and APP_KEY not in printed
    for link in (f"{url}/openapi.json", f"{url}/ui"):  # every link `atoll serve deploy` prints answers
        assert link in printed
        assert httpx.get(link, headers=auth, timeout=30).status_code == 200
    assert f"{url}/docs" not in printed
    assert httpx.post(f"{url}/predict", json={"inputs": [[0.0] * 64]}, headers=auth, timeout=30).status_code == 200
    logs = invoke("serve", "logs", "digits-private", "--json")
    assert logs.exit_code == 0, logs.output
    files = json.loads(logs.stdout)
    assert files and all(f["file"].startswith("serve/replica_digits-private_") for f in files)
    assert any("predict" in f["text"] for f in files)  # the replica's access log
    unknown = invoke("serve", "logs", "digits-nope")
    assert isinstance(unknown.exception, AtollError) and "digits-nope" in str(unknown.exception)


@pytest.mark.cluster
def test_runs_list_shows_the_sessions_training_run_finished(trained_digits) -> None:
    result = invoke("runs", "list", "--json")
    assert result.exit_code == 0, result.output
    run = {r["name"]: r for r in json.loads(result.stdout)}["t-digits"]
    assert (run["kind"], run["state"]) == ("run", runs.FINISHED)
    assert run["epochs_done"] == run["epochs"]
    assert (Path(run["checkpoint"]) / "atoll.json").is_file()  # what `atoll models register` takes


@pytest.mark.cluster
def test_atoll_status_gives_the_line_that_lets_rays_own_tools_reach_the_cluster(ray_cluster) -> None:
    """Issue 32.17: `ray status` or ray.init() on the machine of a loopback-only cluster wait minutes on the GCS
    unless the client is in local-only mode too; `atoll status` (and `atoll up`) print the one line, whole."""
    from atoll import cluster

    shown = run_cli("status", env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    line = next(text for text in shown.stdout.splitlines() if "Ray's own tools" in text)
    exports = dict(pair.split("=", 1) for pair in line.split("export ", 1)[1].split("#")[0].split())
    assert exports == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **exports}
    ray = str(Path(sys.executable).parent / "ray")
    out = subprocess.run([ray, "status", f"--address={cluster.current().gcs_address}"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Resources" in out.stdout, out.stdout[-500:] + out.stderr[-500:]
