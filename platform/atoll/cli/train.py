"""`atoll train` and `atoll tune`: training runs and sweeps as Ray jobs, followed live. Parse, submit, render
with atoll.progress."""

from __future__ import annotations

from pathlib import Path

import typer

from atoll.cli.common import ConfigOpt, JsonOpt, cluster_config, err_console, following, print_json
from atoll.errors import ConfigError

app = typer.Typer()


def _one_name(what: str, *names: str | None) -> str | None:
    """The one name that --name, --resume (and for a sweep --set name=) give, or None; checked (it becomes
    a folder under the storage root)."""
    from atoll.specs import check_name

    given = sorted({n for n in names if n})
    if any(n.startswith("-") for n in given):  # `--resume --json`: the option took the next flag as its value
        raise ConfigError(f"--resume and --name take the {what}'s NAME (`atoll runs list` shows them), not "
                          f"{next(n for n in given if n.startswith('-'))}.")
    if len(given) > 1:
        raise ConfigError(f"two names for the {what}: {', '.join(given)}; give one (`--resume NAME` alone "
                          f"continues NAME).")
    return check_name(given[0], f"{what} name") if given else None


def _submitted(kind: str, job: dict[str, str]) -> str:
    err_console.print(f"Submitted {kind} job [bold]{job['job']}[/]", soft_wrap=True)
    return job["job"]


@app.command("train")
def train_cmd(spec: Path = typer.Argument(Path("jobs/configs/train.yaml"), metavar="SPEC",
                                          help="Training spec (YAML)."),
              set_: list[str] = typer.Option([], "--set", help="Override a field: --set epochs=5 (repeat)."),
              name: str | None = typer.Option(None, "--name", "--run-name", help="Name of the run (default: "
                                                 "NAME-TIMESTAMP); a name in use is refused: resume it instead."),
              resume: str | None = typer.Option(None, "--resume", metavar="NAME", help="Continue the run NAME "
                                                   "from its latest checkpoint (`atoll runs list` shows them)."),
              wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow progress until it ends."),
              config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Train a model on the cluster (a Ray job running `python -m atoll.train`) and register it."""
    from atoll import api, jobs, progress

    _one_name("run", name, resume)
    with cluster_config(config):  # api.fit checks the spec before anything is submitted
        job_id = _submitted("train", api.fit(spec, overrides=set_, name=name, resume=resume, wait=False))
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    with following(job_id):
        details, events = progress.follow_training(job_id)
    registered = jobs.last_event(events, "registered")
    if as_json:
        print_json({"job": details, "registered": registered, "finished": jobs.last_event(events, "finished")})
    if details["status"] != "SUCCEEDED":
        progress.job_failed_hint(job_id)
        raise typer.Exit(1)
    if registered and not as_json:
        progress.print_registered(registered)


@app.command("tune")
def tune_cmd(spec: Path = typer.Argument(Path("jobs/configs/sweep.yaml"), metavar="SPEC",
                                         help="Sweep spec (YAML)."),
             set_: list[str] = typer.Option([], "--set", help="Override a field: --set num_samples=4, "
                                            "--set overrides.epochs=4 (training spec) (repeat)."),
             name: str | None = typer.Option(None, "--name", help="Name of the sweep (default: the spec's "
                                                "`name`); a name in use is refused: resume it instead."),
             resume: str | None = typer.Option(None, "--resume", metavar="NAME", help="Continue the interrupted "
                                                  "sweep NAME; its finished trials are kept (`atoll runs list`)."),
             wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the trials until it ends."),
             config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Sweep hyperparameters with Ray Tune + ASHA (a Ray job running `python -m atoll.tune`); register the best."""
    from atoll import api, jobs, progress

    in_set = [value for key, _, value in (o.partition("=") for o in set_) if key.strip() == "name"]
    sweep = _one_name("sweep", name, resume, *in_set)
    overrides = [*set_, f"name={sweep}"] if sweep else set_
    with cluster_config(config):  # api.sweep checks the spec before anything is submitted
        job_id = _submitted("tune", api.sweep(spec, overrides=overrides, resume=bool(resume), wait=False))
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    with following(job_id):
        details, events = progress.follow_sweep(job_id)
    done, registered = jobs.last_event(events, "sweep_done"), jobs.last_event(events, "registered")
    if as_json:
        print_json({"job": details, "summary": done, "registered": registered})
    if details["status"] != "SUCCEEDED":
        progress.job_failed_hint(job_id)
        raise typer.Exit(1)
    if not as_json:
        if done:
            progress.print_sweep_summary(done)
        if registered:
            progress.print_registered(registered, f" from trial {registered['trial']}")


@app.command("predict")
def predict_cmd(model: str = typer.Argument(..., metavar="MODEL", help="NAME, NAME:VERSION or NAME@ALIAS."),
                input_: str = typer.Option(..., "--input", "-i", help="Parquet or CSV: a file or folder, a local path or "
                                           "an object-store URI."),
                output: str = typer.Option(..., "--output", "-o", help="The Parquet file to write: the input's other "
                                           "columns, prediction and probabilities."),
                batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Rows read and answered "
                                                      "together (default: the task's: 65,536 table rows, 4,096 texts or images)."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
                any_order: bool = typer.Option(False, "--any-order", help="Write rows as the actors finish them "
                                               "(faster when one piece straggles); by default they follow the "
                                               "input's order."),
                runtime: str = typer.Option("auto", "--runtime", help="auto, torch or onnx (auto: ONNX Runtime "
                                            "on CPU where the version has its model.onnx, else torch)."),
                max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="A language model's new tokens "
                                                      "per prompt (default 64; completions are greedy)."),
                wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow progress until it ends."),
                config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Predict a whole dataset with a registered model (a Ray job: Ray Data and an actor pool of the model)."""
    from atoll import api, jobs, progress

    with cluster_config(config):
        job_id = _submitted("predict", api.predict(model, input_, output, batch_size=batch_size,
                                                   overwrite=overwrite, runtime=runtime, any_order=any_order,
                                                   max_tokens=max_tokens, wait=False))
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    with following(job_id):
        details, events = progress.follow_prediction(job_id)
    predicted = jobs.last_event(events, "predicted")
    if as_json:
        print_json({"job": details, "predicted": predicted})
    if details["status"] != "SUCCEEDED":
        progress.job_failed_hint(job_id)
        raise typer.Exit(1)
    if not as_json and predicted:
        err_console.print(f"Predicted {predicted['rows']:,} rows with {predicted['model']} in {predicted['seconds']} s "
                          f"({predicted['rows_per_s']:,.0f} rows/s, {predicted['actors']} actor(s)"
                          f"{' on GPU' if predicted['gpu'] else ''}) → {predicted['output']}", highlight=False,
                          markup=False, soft_wrap=True)
