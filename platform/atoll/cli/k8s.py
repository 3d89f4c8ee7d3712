"""`atoll k8s ...`: KubeRay manifests for the cluster.yaml cluster. Parse, call atoll.kuberay, render."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from atoll import kuberay  # its defaults are in the help; it imports no Ray, torch or httpx
from atoll.cli.common import ConfigOpt, console, err_console, print_json

k8s_app = typer.Typer(help="Kubernetes: KubeRay manifests for the same cluster (RayCluster, RayJob, RayService).",
                      no_args_is_help=True)


@k8s_app.callback()
def _group() -> None:
    """Kubernetes: KubeRay manifests for the same cluster (RayCluster, RayJob, RayService)."""


@k8s_app.command("render")
def render(config: Path | None = ConfigOpt,
           output: Path = typer.Option(Path("k8s"), "--output", "-o", help="Folder to write the manifests to."),
           model: str = typer.Option(kuberay.DEFAULT_MODEL, "--model", help="What the RayService serves: NAME, "
                                     "NAME:VERSION or NAME@ALIAS (pinned to its version now where the registry can be "
                                     "read from here, else when Serve builds the app)."),
           app: str | None = typer.Option(None, "--app", help="Serve application name = URL path (default: NAME)."),
           train_config: str = typer.Option(kuberay.TRAIN_CONFIG, "--train-config", help="Training spec the RayJob "
                                            "runs, relative to the project folder."),
           job_on_cluster: bool = typer.Option(False, "--job-on-cluster", help="Submit the RayJob to the RayCluster "
                                               "(clusterSelector) instead of giving it a cluster of its own."),
           public: bool = typer.Option(False, "--public", help="Serve without an API key even if the RayService "
                                       "rendered before into --output had one (without it, its key is kept)."),
           as_json: bool = typer.Option(False, "--json", help="Print the manifests (one `kind: List`, ready for "
                                        "`kubectl apply -f -`) instead of writing files.")) -> None:
    """Write a RayCluster, a RayJob (training) and a RayService (the model endpoint) for cluster.yaml."""
    from atoll.cli.serve import key_note
    from atoll.config import load_spec
    from atoll.serving import endpoints

    spec = load_spec(config)
    record, what = endpoints.key_record(kuberay.rendered_model_args(output), endpoints.api_key(spec.atoll.serve),
                                        public=public)
    served, pinned = kuberay.pin(spec, model)
    manifests = kuberay.render(spec, model=served, requested=model, app=app, api_key_hash=record,
                               train_config=train_config, job_on_cluster=job_on_cluster)
    notes = kuberay.warnings(spec)
    keys = f"The RayService {pinned}\n" + key_note(what, spec.atoll.serve.api_key_env)
    if as_json:
        print_json(kuberay.as_list(manifests))
        for note in notes:
            err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
        err_console.print(keys, highlight=False, soft_wrap=True, markup=False)
        return
    paths = kuberay.write(spec, manifests, output)
    console.print(f"[green]Wrote[/] {len(paths)} KubeRay manifests from {escape(str(spec.source))}:", highlight=False,
                  soft_wrap=True)
    width = max(len(str(p)) for p in paths)
    for path, manifest in zip(paths, manifests.values()):
        console.print(f"  {path!s:<{width}}   {manifest['kind']} {manifest['metadata']['name']}", highlight=False,
                      markup=False, soft_wrap=True)
    for note in notes:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(keys, highlight=False, soft_wrap=True, markup=False)
    console.print(f"Next (KubeRay operator 1.6+ installed):\n"
                  f"  {escape(kuberay.secret_command(spec))}   # the token; never in a manifest\n"
                  f"  kubectl apply -f {escape(str(paths[0]))}", highlight=False, soft_wrap=True)
