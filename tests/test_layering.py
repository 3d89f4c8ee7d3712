"""The shape of the package, read from its imports with the standard library's ``ast`` (every import, at
module level or inside a function): no circles, the library never imports the CLI, and what runs in a Serve
replica or proxy never imports client-side code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "atoll"
CLIENT_SIDE = {"atoll.cluster", "atoll.serving.endpoints", "atoll.serving.client", "atoll.jobs", "atoll.status", "atoll.quickstart",
               "atoll.kuberay", "atoll.runs", "atoll.serving.logs"}
REPLICA_SIDE = {"atoll.serving", "atoll.serving.replica", "atoll.serving.predictor", "atoll.serving.playground",
                "atoll.serving.proxy_auth", "atoll.serving.openai_api", "atoll.serving.generation",
                "atoll.serving.llm_engine"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each atoll module → the atoll modules it imports."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names}  # `from atoll import cluster`
        graph[name] = {t for t in targets if t in modules and t not in (name, "atoll")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_graph_is_read_from_real_imports():
    graph = import_graph()
    assert "atoll.capacity" in graph["atoll.config"] and "atoll.specs" in graph["atoll.capacity"]
    assert len(graph) > 20


def test_no_module_imports_itself_back_through_others():
    assert _cycles(import_graph()) == []


def test_the_library_never_imports_the_cli():
    graph = import_graph()
    def is_cli(module: str) -> bool:
        return module == "atoll.cli" or module.startswith(("atoll.cli.", "atoll.cli_"))

    offenders = {m: sorted(filter(is_cli, targets)) for m, targets in graph.items() if not is_cli(m)}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_a_serve_replica_or_proxy_never_imports_client_side_code():
    graph = import_graph()
    for module in REPLICA_SIDE:
        assert _reachable(graph, module) & CLIENT_SIDE == set(), module


def test_the_pure_layers_import_nothing_above_them():
    graph = import_graph()
    # pydantic models, the catalogue of task names, and the error a name check raises (errors imports nothing)
    assert graph["atoll.specs"] <= {"atoll.tasks", "atoll.errors"}
    assert graph["atoll.errors"] == set()
    assert graph["atoll.tasks"] <= {"atoll.errors", "atoll.tasks.base"}  # names only (the base for typing)
    assert _reachable(graph, "atoll.capacity") <= {"atoll.specs", "atoll.tasks", "atoll.tasks.base", "atoll.errors"}
    assert _reachable(graph, "atoll.config") <= {"atoll.specs", "atoll.capacity", "atoll.errors", "atoll.tasks",
                                                 "atoll.tasks.base", "atoll.filesystems", "atoll.ray_compat",
                                                 "atoll.ingress"}
    assert graph["atoll.ray_compat"] == set()  # the adapter over Ray's internals sits below everything
    assert graph["atoll.filesystems"] <= {"atoll.errors", "atoll.specs"}  # paths and the store's variables: no IO above


def test_the_public_api_resolves_every_name_and_import_atoll_stays_light():
    import subprocess
    import sys

    code = ("import sys, atoll\n"
            "assert not {'ray', 'torch', 'pandas'} & set(sys.modules), 'import atoll pulled in the library'\n"
            "missing = [n for n in atoll.__all__ if getattr(atoll, n, None) is None]\n"
            "undocumented = [n for n in atoll.__all__ if n != '__version__' and not getattr(atoll, n).__doc__]\n"
            "assert not missing and not undocumented, (missing, undocumented)\n"
            "import atoll.train, atoll.registry\n"  # a verb never shadows a submodule of the same name
            "from atoll import registry, train\n"
            "assert type(registry).__name__ == type(train).__name__ == 'module'\n"
            "print(len(atoll.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) >= 20


def test_atoll_predictor_runs_a_model_without_importing_serve_or_fastapi():
    """Issue 32.20: ``atoll.Predictor`` is serving/predictor.py's, which exists so that batch jobs and notebooks
    load a version without Ray Serve and its web stack (it resolved to the replica module before)."""
    import subprocess
    import sys

    code = ("import sys, atoll\n"
            "assert atoll.Predictor.__module__ == 'atoll.serving.predictor'\n"
            "print(sorted({'ray.serve', 'fastapi', 'starlette'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_only_ray_compat_touches_rays_private_apis_and_it_names_the_ray_it_was_read_against():
    """Issue 32.20: Ray's internals (``_private`` modules, ``_``-prefixed names, the Serve controller's
    methods) change between releases; one adapter holds every use, so the next Ray upgrade is one file. This
    fails when a module elsewhere imports one, and when the installed Ray is not one the adapter names."""
    import ray
    from atoll import ray_compat

    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "ray_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray"):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("ray")]
            elif isinstance(node, ast.Attribute) and node.attr in ("_upload_py_modules_if_needed",
                                                                  "get_app_configs", "_get_global_client"):
                names = [node.attr]
            if any("._private" in n or n.startswith("_") or n in ("get_app_configs",) for n in names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == [], f"private Ray APIs outside atoll/ray_compat.py: {offenders}"
    assert tuple(int(p) for p in ray.__version__.split(".")[:2]) in ray_compat.TESTED
