"""`atoll quickstart`: the whole lifecycle on this machine, through the paths a team uses in production.

cluster up → demo data → training job → sweep job → `production` alias → Serve endpoint → held-out
predictions over HTTP. Every step is a library call of its own module; this one orders them, shows
them, and stops at the first failure with the step's name, the cause and the log to read.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from atoll import cluster, data, jobs, progress, registry, tasks
from atoll.console import console
from atoll.errors import AtollError
from atoll.serving import client, endpoints

ALIAS = "production"


@dataclasses.dataclass(frozen=True)
class Demo:
    """One task's demo: its data, its training and sweep specs (jobs/configs/) and how the run is sized."""

    dataset: str
    train: str
    sweep: str
    about: str  # the data, for people
    inputs: str  # what a request holds, for the "what next" panel
    epochs: tuple[int, int]  # (--fast, full)
    trials: tuple[int, int]
    trial_epochs: tuple[int, int]
    try_it: str
    task: str = "tabular-classification"

    @property
    def generates(self) -> bool:
        return self.task == "text-generation"


DEMOS = {
    "tabular": Demo("digits", "train.yaml", "sweep.yaml",
                    "scikit-learn's handwritten digits as Parquet, px0..px63: 8x8 pixels 0-16, label: 0-9",
                    "rows of 64 pixel values", (3, 10), (4, 8), (4, 8), "draw a digit"),
    "text": Demo("sms_spam", "text.yaml", "text_sweep.yaml",
                 "the SMS Spam Collection (UCI, CC BY 4.0) as Parquet, text: a message, label: ham or spam",
                 "a list of texts", (2, 3), (2, 4), (2, 3), "type a message"),
    "image": Demo("digits_images", "image.yaml", "image_sweep.yaml",
                  "scikit-learn's handwritten digits as 8x8 grey PNGs in Parquet, image: the PNG, label: 0-9",
                  "pixel rows (0-255) or PNG/JPEG files in base64", (5, 10), (4, 6), (4, 8),
                  "draw a digit or upload an image"),
    "generate": Demo("sms_chat", "generate.yaml", "generate_sweep.yaml",
                     "the SMS Spam Collection (UCI, CC BY 4.0) as chats in Parquet, messages: a user asks for a text "
                     "(spam or to a friend), the assistant writes one", "a chat: messages of role and content",
                     (2, 8), (2, 2), (1, 2), "chat with it", task="text-generation"),
}


class StepFailed(AtollError):
    """A quickstart step failed: which one, why, and where to look."""


def _step(number: int, title: str) -> None:
    console.rule(f"[bold]{number}/7  {title}", align="left")


def _job_outcome(kind: str, job_id: str, details: dict[str, Any], registered: dict[str, Any] | None) -> dict:
    if details["status"] != "SUCCEEDED":
        tail = "\n".join(jobs.logs(job_id).strip().splitlines()[-8:])
        raise StepFailed(f"{kind} job {job_id} ended {details['status']}: {details.get('message') or ''}\n{tail}\n"
                         f"  full logs: atoll jobs logs {job_id}")
    if registered is None:
        raise StepFailed(f"{kind} job {job_id} registered no model; see `atoll jobs logs {job_id}`.")
    return registered


def _digit_art(row: np.ndarray, top: float = 16.0) -> list[str]:
    """An 8x8 digit (pixel values 0..``top``) as 4 lines of half-block characters."""
    img = np.asarray(row, dtype=np.float64).reshape(8, 8) / top
    chars = " ░▒▓█"
    return ["".join(chars[min(4, int(v * 4.99))] * 2 for v in line) for line in img[::2]]


def run(*, fast: bool = False, down: bool = False, config: str | Path | None = None,
        task: str = "tabular") -> dict[str, Any]:
    """Run the quickstart; returns what each step produced (versions, app, accuracy, paths, timings).

    Args:
        fast: Fewest epochs and trials (CI, smoke tests).
        down: Stop the cluster at the end (default: leave the cluster and endpoint running).
        task: Whose demo: ``tabular`` (the digits as rows of pixels), ``text``, ``image`` or ``generate`` (a
            language model, served with OpenAI's API, ending in its chat playground).

    Raises:
        ConfigError: an unknown ``task``, before anything starts.
    """
    from atoll.errors import ConfigError

    if task not in DEMOS:
        raise ConfigError(f"--task {task!r}: choose one of {', '.join(DEMOS)}.")
    demo = DEMOS[task]
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"timings_s": timings, "task": task}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    t = time.monotonic()
    _step(1, "Cluster")
    spec = cluster.load_spec(config)
    info = cluster.up(spec)
    console.print(f"{'Reusing' if info.already_up else 'Started'} the local Ray cluster: dashboard "
                  f"{info.dashboard_url} (token auth on)", markup=False, highlight=False, soft_wrap=True)
    lap("cluster", t)
    # --down stops only a cluster this run started, whether the steps succeed or fail; a reused one stays.
    stop_at_end = down and not info.already_up
    out["cluster"] = {"reused": info.already_up, "stopped": stop_at_end}
    try:
        _steps(spec, info, out, lap, stamp, fast, demo)
    finally:
        if stop_at_end:
            with console.status("Stopping the cluster the quickstart started (--down) …"):
                cluster.down()
    timings["total"] = round(time.monotonic() - started, 1)
    _finish(out, info, spec, demo, stopped=stop_at_end, reused_and_kept=down and info.already_up)
    return out


def _steps(spec, info, out: dict[str, Any], lap, stamp: str, fast: bool, demo: Demo) -> None:
    """Steps 2 to 7 on the running cluster; fills ``out``."""
    t = time.monotonic()
    _step(2, "Data")
    storage = spec.atoll.storage
    paths = data.prepare_demo(storage, demo.dataset)
    summary = data.describe(paths["train"])
    held = data.describe(paths["holdout"])["rows"]
    console.print(f"{demo.about}: {paths['train']}\n{summary['rows']} rows x {len(summary['columns'])} columns; "
                  f"{paths['holdout']} keeps {held} rows back for the endpoint test", highlight=False, markup=False,
                  soft_wrap=True)
    t = lap("data", t)

    _step(3, "Training job (Ray Train, 2 workers, through the Jobs API)")
    epochs = demo.epochs[0 if fast else 1]
    configs = cluster.project_root(spec) / "jobs" / "configs"
    if not (configs / demo.train).is_file():
        raise StepFailed(f"no {configs / demo.train}: run the quickstart from the Atoll project folder (the "
                         f"one holding cluster.yaml and jobs/), or pass -c path/to/cluster.yaml.")
    job_id = jobs.submit_atoll_job("train", configs / demo.train, [f"epochs={epochs}"],
                                   ["--run-name", f"quickstart-{stamp}"])
    console.print(f"job {job_id}", markup=False, highlight=False)
    details, events = progress.follow_training(job_id)
    trained = _job_outcome("training", job_id, details, jobs.last_event(events, "registered"))
    progress.print_registered(trained)
    out["trained"] = trained
    t = lap("train", t)

    _step(4, "Sweep job (Ray Tune + ASHA over the same training loop)")
    pick = 0 if fast else 1
    sweep_set = [f"name=quickstart-{stamp}", f"num_samples={demo.trials[pick]}",
                 f"overrides.epochs={demo.trial_epochs[pick]}"]
    job_id = jobs.submit_atoll_job("tune", configs / demo.sweep, sweep_set)
    console.print(f"job {job_id}", markup=False, highlight=False)
    details, events = progress.follow_sweep(job_id)
    swept = _job_outcome("sweep", job_id, details, jobs.last_event(events, "registered"))
    if done := jobs.last_event(events, "sweep_done"):
        progress.print_sweep_summary(done)
        out["sweep"] = {k: done.get(k) for k in ("trials", "trial_epochs", "stopped_early", "results_csv", "plot")}
    progress.print_registered(swept, f" from trial {swept.get('trial')}")
    t = lap("sweep", t)

    _step(5, f"Registry: point @{ALIAS} at the best version")
    metric, mode = tasks.get(demo.task).objective
    sign = 1 if mode == "max" else -1
    best = max((trained, swept), key=lambda r: sign * r["metrics"].get(metric, -sign * float("inf")))
    reg = registry.Registry(storage)
    reg.set_alias(best["name"], best["version"], ALIAS)
    out["production"] = {"name": best["name"], "version": best["version"], metric: best["metrics"].get(metric)}
    console.print(f"{best['name']}@{ALIAS} → version {best['version']} "
                  f"({metric} {best['metrics'].get(metric, 0):.4f}, the better of the trained and "
                  f"swept versions)", highlight=False)
    t = lap("registry", t)

    _step(6, "Serve: deploy it as an HTTP endpoint")
    with console.status(f"deploying {best['name']}@{ALIAS} …"):
        deployed = endpoints.deploy(f"{best['name']}@{ALIAS}", spec=spec, info=info)
    out["deployed"] = deployed
    route = "v1/chat/completions (OpenAI's API)" if demo.generates else "predict"
    console.print(f"{deployed['app']} is {deployed['status']} at {deployed['url']}/{route} "
                  f"(serving {deployed['model']}:{deployed['version']})", highlight=False, markup=False, soft_wrap=True)
    t = lap("serve", t)

    _step(7, "Query the endpoint with held-out examples")
    import pandas as pd

    holdout = pd.read_parquet(paths["holdout"])
    if demo.generates:
        out["replies"] = _chat(deployed, holdout, spec)
        lap("query", t)
        return
    inputs, labels, art = _requests(holdout, demo)
    predictions: list[Any] = []
    for start in range(0, len(inputs), 60):
        answer = client.query(deployed["app"], {"inputs": inputs[start:start + 60]}, spec=spec)
        predictions += answer["predictions"]
    accuracy = float((np.asarray(predictions) == labels).mean())
    out["holdout_accuracy"] = accuracy
    shown = range(max(3, min(8, console.width // 20)))  # as many examples as the terminal fits
    table = Table.grid(padding=(0, 3))
    for _ in shown:
        table.add_column(min_width=16, max_width=18, no_wrap=art is not None, overflow="ellipsis")
    # The held-out texts and labels are data, printed as they are (a message may hold "[/b]").
    table.add_row(*[Text("\n".join(art(i)) if art else str(inputs[i])[:70]) for i in shown])
    table.add_row(*[Text.assemble(f"true      {labels[i]}\npredicted ",
                                  (str(predictions[i]), "green" if predictions[i] == labels[i] else "red"))
                    for i in shown])
    console.print(table)
    console.print(f"Endpoint accuracy on the {len(inputs)} held-out examples: [bold]{accuracy:.3f}[/]")
    lap("query", t)


def _chat(deployed: dict[str, Any], holdout, spec, shown: int = 4) -> list[dict[str, str]]:
    """A few held-out chats' first turns sent to the endpoint's chat completions (greedy); the replies, printed
    beside the held-out answers."""
    from atoll.tasks.generation import _messages

    replies, table = [], Table(show_header=True, header_style="bold", expand=True)
    for column in ("asked", "the model wrote", "a held-out answer"):
        table.add_column(column, overflow="fold")
    for i, value in enumerate(holdout["messages"].tolist()[:shown]):
        turns = _messages(value, f"held-out row {i}")
        body = {"model": deployed["model"], "messages": turns[:1], "max_tokens": 48, "temperature": 0}
        answer = client.query(deployed["app"], body, spec=spec, path="v1/chat/completions")
        reply = answer["choices"][0]["message"]["content"]
        replies.append({"prompt": turns[0]["content"], "reply": reply})
        # Data, printed as it is (a message may hold "[/b]").
        table.add_row(Text(turns[0]["content"]), Text(reply), Text(turns[1]["content"] if len(turns) > 1 else ""))
    console.print(table)
    return replies


def _requests(holdout, demo: Demo):
    """The held-out rows as request inputs, their labels, and a picture of row ``i`` for the terminal (None
    for texts, which show themselves)."""
    labels = holdout["label"].to_numpy()
    if demo.dataset == "sms_spam":
        return holdout["text"].astype(str).tolist(), labels, None
    if demo.dataset == "digits_images":
        from PIL import Image

        grey = [np.asarray(Image.open(io.BytesIO(blob))) for blob in holdout["image"]]
        return [g.tolist() for g in grey], labels, lambda i: _digit_art(grey[i], 255.0)
    rows = holdout[[c for c in holdout.columns if c != "label"]].to_numpy(dtype=np.float32)
    return rows.tolist(), labels, lambda i: _digit_art(rows[i])


def _finish(out: dict[str, Any], info, spec, demo: Demo, *, stopped: bool, reused_and_kept: bool) -> None:
    deployed = out["deployed"]
    url = deployed["url"]
    sweep = out.get("sweep") or {}
    auth = endpoints.curl_auth(spec.atoll.serve, deployed.get("keyed"))  # a kept key counts too
    if demo.generates:
        chat = json.dumps({"model": deployed["model"], "stream": True,
                           "messages": [{"role": "user", "content": "Write a text message to a friend."}]})
        key = "os.environ['ATOLL_API_KEY']" if deployed.get("keyed") else "'none'"
        query = [f"Query it      curl -sN {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
                 f"-d '{chat}'   (OpenAI's API, streamed)",
                 f"  with openai OpenAI(base_url='{url}/v1', api_key={key}).chat.completions.create(...)",
                 f"Export it     atoll models export {deployed['model']}@{ALIAS} --format hf -o DIR   (a Hugging Face "
                 f"folder)"]
    else:
        query = [f"Query it      atoll query {deployed['app']} --file rows.json   ({demo.inputs})",
                 f"  with curl   curl -s {url}/predict -H 'Content-Type: application/json'{auth} -d @rows.json",
                 f"API schema    {url}/openapi.json"]
    lines = [f"Done in {out['timings_s']['total']:.0f} s.",
             f"Dashboard     {info.dashboard_url}",
             *query,
             f"Look around   atoll status | atoll models list | atoll models show {deployed['model']}@{ALIAS}",
             "              atoll serve status | atoll jobs list",
             f"Models        {spec.atoll.storage}/registry/{deployed['model']}/ (training_curve.png in each version)"]
    if sweep.get("plot"):
        lines.append(f"Sweep         {sweep['plot']}")
    if stopped:
        lines.append("The cluster is stopped (--down): `atoll quickstart` starts it again.")
    else:
        if reused_and_kept:
            lines.append("The cluster was up before the quickstart, so --down left it running.")
        lines.append("Stop it all   atoll down")
        lines.append(f"Try it        {deployed.get('playground') or url + '/ui'}   ({demo.try_it}; all models: "
                     f"{deployed.get('gallery') or '/'})")
    # Not in a box: a box wraps its lines at the terminal's width (80 in a pipe or CI), cutting a path, a URL or
    # a command in two. Each line is printed whole (a terminal folds it visually; a copy takes it whole).
    console.rule("[bold]What next", align="left")
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
