"""The model registry (atoll.registry) and its CLI (atoll.cli.models): no Ray, no cluster, tmp_path only."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from atoll.errors import ConfigError, RegistryError
from atoll.registry import ModelVersion, Registry, open_registry, parse_ref

# torch and the CLI are imported inside the tests that need them: the multiprocessing test spawns
# children that import this module, and they should start fast.

SCHEMA = {"features": 64, "dtype": "float32"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A tiny checkpoint: a Linear state dict, atoll.json and one extra file in a subfolder."""
    import torch

    torch.manual_seed(0)
    d = tmp_path / "ckpt"
    (d / "extra").mkdir(parents=True)
    torch.save(torch.nn.Linear(4, 3).state_dict(), d / "model.pt")
    (d / "atoll.json").write_text(json.dumps({"preprocess": {"scale": 16.0}, "input_schema": SCHEMA,
                                              "model": {"type": "linear"}, "spec": {"epochs": 1}}))
    (d / "extra" / "notes.txt").write_text("hello")
    return d


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "store"))


def _register(reg: Registry, ckpt: Path, name: str = "digits", **kw: Any) -> ModelVersion:
    kw.setdefault("metrics", {"val_accuracy": 0.9})
    kw.setdefault("spec", {"epochs": 1})
    return reg.register(name, str(ckpt), **kw)


# ------------------------------------------------------------------------------------------------
# Registering and reading


def test_register_creates_consecutive_immutable_versions(reg: Registry, ckpt: Path, tmp_path: Path) -> None:
    lineage = {"dataset_fingerprint": "sha256:abc", "ray_job_id": "raysubmit_1", "git_commit": "deadbeef",
               "run_name": "run-1"}
    v1 = _register(reg, ckpt, metrics={"val_accuracy": 0.91}, lineage=lineage)
    v2 = _register(reg, ckpt, metrics={"val_accuracy": 0.95})
    assert (v1.version, v2.version) == (1, 2)
    vdir = tmp_path / "store" / "registry" / "digits" / "versions" / "1"
    assert v1.uri == str(vdir)
    assert sorted(p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()) == \
        ["atoll.json", "extra/notes.txt", "manifest.json", "model.pt"]
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["name"] == "digits" and manifest["version"] == 1 and manifest["status"] == "READY"
    assert manifest["metrics"] == {"val_accuracy": 0.91}
    assert manifest["spec"] == {"epochs": 1}
    assert manifest["lineage"] == lineage
    assert manifest["input_schema"] == SCHEMA  # taken from atoll.json
    assert manifest["files"]["model.pt"]["sha256"] == _sha(ckpt / "model.pt")
    assert manifest["files"]["extra/notes.txt"] == {"sha256": _sha(ckpt / "extra" / "notes.txt"), "size": 5}
    assert abs(time.time() - dt.datetime.fromisoformat(manifest["created_at"]).timestamp()) < 60
    assert v1.manifest == manifest and v1.metrics == {"val_accuracy": 0.91}
    assert v1.to_dict()["ref"] == "digits:1" and v1.to_dict()["files"] == manifest["files"]
    assert [mv.version for mv in reg.list_versions("digits")] == [1, 2]


def test_register_options(reg: Registry, ckpt: Path) -> None:
    import torch

    mv = _register(reg, ckpt, input_schema={"rows": "list"}, files_from_checkpoint=False,
                   metrics={"loss": torch.tensor(0.25), "steps": (1, 2)})
    assert mv.input_schema == {"rows": "list"}
    assert sorted(mv.files) == ["atoll.json", "model.pt"]
    assert mv.metrics == {"loss": 0.25, "steps": [1, 2]}  # tensors and tuples become JSON
    with pytest.raises(RegistryError, match="metrics is not JSON-serializable"):
        _register(reg, ckpt, metrics={"bad": object()})


def test_get_by_name_version_and_alias(reg: Registry, ckpt: Path) -> None:
    for _ in range(3):
        _register(reg, ckpt)
    reg.set_alias("digits", 2, "production")
    assert reg.get("digits").version == 3
    assert reg.get("digits:1").version == 1
    assert reg.get("digits@production").version == 2
    assert open_registry(reg.root).get("digits:2").manifest == reg.get("digits@production").manifest


def test_weights_round_trip(reg: Registry, ckpt: Path, tmp_path: Path) -> None:
    import torch

    original = torch.load(ckpt / "model.pt", weights_only=True)
    mv = _register(reg, ckpt)
    loaded = reg.load_weights(reg.get("digits"))
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    assert json.loads(reg.read_file(mv, "atoll.json"))["input_schema"] == SCHEMA
    out = Path(reg.local_copy(mv, str(tmp_path / "copy")))
    assert _sha(out / "model.pt") == _sha(ckpt / "model.pt")
    assert (out / "extra" / "notes.txt").read_text() == "hello"
    assert json.loads((out / "manifest.json").read_text())["version"] == 1
    with pytest.raises(RegistryError, match="no file 'nope.txt'; files: atoll.json, extra/notes.txt"):
        reg.read_file(mv, "nope.txt")


def test_safetensors_weights_are_kept_and_preferred_and_a_broken_file_is_one_line(reg: Registry, ckpt: Path) -> None:
    """What training writes (model.safetensors: plain tensors, no pickle) registers and loads like the older
    torch.save file; with both present the safetensors one is read."""
    import torch
    from safetensors.torch import save_file

    original = torch.load(ckpt / "model.pt", weights_only=True)
    save_file({k: v * 2 for k, v in original.items()}, ckpt / "model.safetensors")
    mv = _register(reg, ckpt)
    assert {"model.safetensors", "model.pt"} <= set(mv.files)
    loaded = reg.load_weights(mv)
    assert all(torch.equal(loaded[k], original[k] * 2) for k in original)
    (ckpt / "model.pt").unlink()
    (ckpt / "model.safetensors").write_bytes(b"not safetensors")
    broken = _register(reg, ckpt)
    with pytest.raises(RegistryError, match=rf"digits:{broken.version}: model.safetensors is not a loadable state "
                                            rf"dict .* Save it with safetensors.torch.save_file"):
        reg.load_weights(broken)


def test_tampered_weights_are_detected(reg: Registry, ckpt: Path, tmp_path: Path) -> None:
    mv = _register(reg, ckpt)
    weights = Path(mv.uri) / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="does not match the sha256"):
        reg.load_weights(mv)
    with pytest.raises(RegistryError, match="does not match the sha256"):
        reg.local_copy(mv, str(tmp_path / "copy"))
    assert not (tmp_path / "copy" / "model.pt").exists()  # no unverified file left behind


def test_non_state_dict_weights_are_refused(reg: Registry, ckpt: Path) -> None:
    import torch

    torch.save(torch.zeros(3), ckpt / "model.pt")
    with pytest.raises(RegistryError, match="not a state dict"):
        reg.load_weights(_register(reg, ckpt))


# ------------------------------------------------------------------------------------------------
# Aliases and deletion


def test_alias_moves_atomically(reg: Registry, ckpt: Path, tmp_path: Path) -> None:
    _register(reg, ckpt)
    _register(reg, ckpt)
    reg.set_alias("digits", 1, "production")
    reg.set_alias("digits", 1, "staging")
    reg.set_alias("digits", 2, "production")
    assert reg.get("digits@production").version == 2
    assert reg.aliases("digits") == {"production": 2, "staging": 1}
    stored = json.loads((tmp_path / "store" / "registry" / "digits" / "aliases.json").read_text())
    assert stored == {"production": 2, "staging": 1}
    assert not list((tmp_path / "store" / "registry" / "digits").glob("*.tmp"))
    with pytest.raises(RegistryError, match="no version 9; versions: 1, 2"):
        reg.set_alias("digits", 9, "production")
    with pytest.raises(RegistryError, match="invalid alias"):
        reg.set_alias("digits", 1, "bad alias")
    reg.remove_alias("digits", "staging")
    assert reg.aliases("digits") == {"production": 2}


def test_promote_moves_an_alias_says_where_it_was_and_refuses_a_bare_name(reg: Registry, ckpt: Path) -> None:
    _register(reg, ckpt)
    _register(reg, ckpt)
    assert [(mv.ref, before) for mv, before in (reg.promote("digits:1", "production"),
                                                 reg.promote("digits:2", "production"),
                                                 reg.promote("digits@production", "staging"))] == \
        [("digits:1", None), ("digits:2", 1), ("digits:2", None)]
    assert reg.aliases("digits") == {"production": 2, "staging": 2}
    with pytest.raises(RegistryError, match=r"needs an explicit version, NAME:VERSION \(e.g. digits:1\)"):
        reg.promote("digits", "production")  # "the latest" would move the alias silently later on
    assert reg.aliases("digits") == {"production": 2, "staging": 2}


def test_delete_refused_while_aliased_then_allowed(reg: Registry, ckpt: Path) -> None:
    _register(reg, ckpt)
    _register(reg, ckpt)
    reg.set_alias("digits", 2, "production")
    with pytest.raises(RegistryError, match=r"cannot delete digits:2: @production points at it"):
        reg.delete("digits", 2)
    assert reg.get("digits:2").version == 2  # still there
    reg.set_alias("digits", 1, "production")
    for version in (1, 2):
        reg.add_evaluation("digits", version, {"metrics": {"accuracy": 0.9}, "data": "held-out.parquet"})
    reg.delete("digits", 2)
    assert [mv.version for mv in reg.list_versions("digits")] == [1]
    evaluations = Path(reg.root) / "registry" / "digits" / "evaluations"
    assert [p.name for p in evaluations.iterdir()] == ["1"] and len(reg.evaluations("digits", 1)) == 1
    assert reg.get("digits").version == 1
    with pytest.raises(RegistryError, match="no version 2: it was deleted at .*; versions: 1"):
        reg.get("digits:2")
    assert _register(reg, ckpt).version == 3  # a deleted number is never reused
    with pytest.raises(RegistryError, match="no version 2"):
        reg.delete("digits", 2)


# ------------------------------------------------------------------------------------------------
# Concurrency and crashes


def test_concurrent_threads_get_distinct_consecutive_versions(reg: Registry, ckpt: Path) -> None:
    n = 8
    barrier = threading.Barrier(n)
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = _register(reg, ckpt, lineage={"run_name": f"t{i}"}).version
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(results.values()) == list(range(1, n + 1))
    versions = reg.list_versions("digits")
    assert [mv.version for mv in versions] == list(range(1, n + 1))
    # Each version holds the manifest of the writer that got it, with intact files.
    assert {mv.lineage["run_name"]: mv.version for mv in versions} == {f"t{i}": v for i, v in results.items()}
    assert all(reg.read_file(mv, "model.pt") for mv in versions)


def _register_in_process(root: str, ckpt: str, tag: str, barrier: Any, queue: Any) -> None:
    """Child process body for the multiprocessing test (module level so that spawn can import it)."""
    try:
        barrier.wait(timeout=60)
        reg = Registry(root)
        got = [reg.register("digits", ckpt, metrics={}, spec={}, lineage={"run_name": f"{tag}-{i}"}).version
               for i in range(2)]
        queue.put((tag, got))
    except BaseException as exc:
        queue.put((tag, repr(exc)))


def test_concurrent_processes_get_distinct_consecutive_versions(reg: Registry, ckpt: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with pyarrow/torch threads
    n = 4
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_register_in_process, args=(reg.root, str(ckpt), f"p{i}", barrier, queue))
             for i in range(n)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in range(n))
    for p in procs:
        p.join(timeout=30)
    assert all(isinstance(v, list) for v in results.values()), results
    got = sorted(v for vs in results.values() for v in vs)
    assert got == list(range(1, 2 * n + 1))
    versions = reg.list_versions("digits")
    assert len(versions) == 2 * n
    assert {mv.lineage["run_name"] for mv in versions} == {f"p{i}-{j}" for i in range(n) for j in range(2)}


def test_concurrent_alias_updates_lose_nothing(reg: Registry, ckpt: Path) -> None:
    _register(reg, ckpt)
    _register(reg, ckpt)
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            reg.set_alias("digits", 1 + i % 2, f"a{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert reg.aliases("digits") == {f"a{i}": 1 + i % 2 for i in range(n)}


def test_crash_mid_register_leaves_nothing_visible(reg: Registry, ckpt: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _register(reg, ckpt)
    real_copy = Registry._copy_in
    calls = []

    def failing_copy(self: Registry, *args: Any) -> dict[str, Any]:
        calls.append(args)
        if len(calls) > 1:
            raise OSError("disk full (simulated)")
        return real_copy(self, *args)

    monkeypatch.setattr(Registry, "_copy_in", failing_copy)
    with pytest.raises(OSError, match="simulated"):
        _register(reg, ckpt)
    assert len(calls) == 2  # it did fail midway, after one file
    model_dir = tmp_path / "store" / "registry" / "digits"
    assert [mv.version for mv in reg.list_versions("digits")] == [1]
    assert reg.get("digits").version == 1
    assert sorted(p.name for p in (model_dir / "versions").iterdir()) == ["1"]
    # What is left is the FAILED manifest, for inspection; the staged files are gone.
    (failed,) = reg.registrations("digits")
    assert (failed.state, failed.error) == ("FAILED", "OSError: disk full (simulated)")
    assert [p.name for p in (model_dir / ".staging" / failed.id).iterdir()] == ["manifest.json"]
    monkeypatch.undo()
    assert _register(reg, ckpt).version == 2  # the failure burned no number


def test_registration_goes_pending_then_ready(reg: Registry, ckpt: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    seen: list[tuple[str, list[str]]] = []
    real_copy = Registry._copy_in

    def watching_copy(self: Registry, src_fs: Any, src: str, dst: str) -> dict[str, Any]:
        (staged_dir,) = (Path(reg.root) / "registry" / "digits" / ".staging").iterdir()
        staged = json.loads((staged_dir / "manifest.json").read_text())
        seen.append((staged["status"], [r.state for r in self.registrations("digits")]))
        assert staged["writer"]["host"] == socket.gethostname() and staged["writer"]["pid"] == os.getpid()
        assert staged["writer"]["started_at"] and staged["version"] is None
        return real_copy(self, src_fs, src, dst)

    monkeypatch.setattr(Registry, "_copy_in", watching_copy)
    mv = _register(reg, ckpt)
    assert seen == [("PENDING", ["PENDING"])] * 3  # written first, before any file; listed while alive
    assert mv.manifest["status"] == "READY" and mv.manifest["writer"]["pid"] == os.getpid()
    assert reg.registrations("digits") == []  # published: nothing left in staging


def _fake_staging(reg: Registry, key: str, status: str, host: str, pid: int, age_s: float = 0) -> Path:
    d = Path(reg.root) / "registry" / "digits" / ".staging" / key
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(b"half")
    (d / "manifest.json").write_text(json.dumps({"status": status, "metrics": {"acc": 0.5}, "writer": {
        "host": host, "pid": pid, "started_at": f"2024-01-01T00:00:0{len(key) % 10}+00:00"}}))
    if age_s:
        past = time.time() - age_s
        for f in (d / "model.pt", d / "manifest.json", d):
            os.utime(f, (past, past))
    return d


def test_dead_or_stale_writers_are_reported_failed(reg: Registry, ckpt: Path) -> None:
    import socket
    import subprocess
    import sys

    _register(reg, ckpt)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # reaped: its pid is free
    here = socket.gethostname()
    dead = _fake_staging(reg, "dead", "PENDING", here, gone.pid)
    _fake_staging(reg, "publishing", "READY", here, gone.pid)  # died between the READY write and the rename
    _fake_staging(reg, "live", "PENDING", here, os.getpid())
    _fake_staging(reg, "elsewhere", "PENDING", "another-host", 1)  # cannot tell: pending until stale
    _fake_staging(reg, "stale", "PENDING", here, os.getpid(), age_s=2 * 3600)
    states = {r.id: (r.state, r.error) for r in reg.registrations("digits")}
    assert states == {"dead": ("FAILED", f"writer died (host {here}, pid {gone.pid})"),
                      "publishing": ("FAILED", f"writer died (host {here}, pid {gone.pid})"),
                      "live": ("PENDING", None), "elsewhere": ("PENDING", None),
                      "stale": ("FAILED", "writer died: no write for 120 min")}
    assert [mv.version for mv in reg.list_versions("digits")] == [1]  # none of them is a version
    assert _register(reg, ckpt).version == 2
    assert dead.exists()  # reported, not deleted: only age deletes a staging folder
    assert "stale" not in {r.id for r in reg.registrations("digits")}


def test_unreaped_killed_writer_counts_as_dead() -> None:
    import subprocess

    from atoll.registry.writers import _pid_alive

    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.time() + 10
        while _pid_alive(zombie.pid) and time.time() < deadline:  # exited but not waited for: a zombie
            time.sleep(0.01)
        assert not _pid_alive(zombie.pid)
    finally:
        zombie.wait()
    assert _pid_alive(os.getpid())


def test_only_ready_versions_can_be_aliased(reg: Registry, ckpt: Path, tmp_path: Path) -> None:
    for _ in range(3):
        _register(reg, ckpt)
    reg.delete("digits", 2)
    half = tmp_path / "store" / "registry" / "digits" / "versions" / "4"
    half.mkdir()
    (half / "model.pt").write_bytes(b"partial")
    _fake_staging(reg, "pending", "READY", "another-host", 1)  # about to publish: not a version yet
    with pytest.raises(RegistryError, match=r"no version 2: it was deleted at .*; versions: 1, 3\.$"):
        reg.set_alias("digits", 2, "production")
    with pytest.raises(RegistryError, match=r"no version 4: its publish never finished"):
        reg.set_alias("digits", 4, "production")
    with pytest.raises(RegistryError, match=r"no version 5; versions: 1, 3\.$"):
        reg.set_alias("digits", 5, "production")
    assert reg.aliases("digits") == {}
    assert reg.get("digits").version == 3  # the latest READY one


def test_half_published_or_unparsable_versions_are_invisible(reg: Registry, ckpt: Path, tmp_path: Path) -> None:
    """What a crash during an object-store publish leaves (files in versions/N, no manifest), and a
    manifest that is no JSON (never a torn write: manifests are written whole, so a damaged one)."""
    _register(reg, ckpt)
    versions = tmp_path / "store" / "registry" / "digits" / "versions"
    for n in (2, 3):
        (versions / str(n)).mkdir()
        (versions / str(n) / "model.pt").write_bytes(b"partial")
    (versions / "3" / "manifest.json").write_text('{"status": "REA')
    assert [mv.version for mv in reg.list_versions("digits")] == [1]
    assert reg.get("digits").version == 1
    with pytest.raises(RegistryError, match=r"no version 2: its publish never finished \(no READY "
                                            r"manifest\); versions: 1"):
        reg.get("digits:2")
    with pytest.raises(RegistryError, match=r"no version 3: its manifest.json is not a JSON object "
                                            r"\(corrupted or changed by hand\); versions: 1"):
        reg.get("digits:3")
    assert _register(reg, ckpt).version == 4


def test_stale_staging_is_cleaned_and_fresh_one_ignored(reg: Registry, ckpt: Path, tmp_path: Path) -> None:
    _register(reg, ckpt)
    staging = tmp_path / "store" / "registry" / "digits" / ".staging"
    old, fresh = staging / "old", staging / "fresh"
    for d in (old, fresh):
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"half")
    past = time.time() - 2 * 3600
    os.utime(old / "model.pt", (past, past))
    os.utime(old, (past, past))
    assert [mv.version for mv in reg.list_versions("digits")] == [1]
    assert _register(reg, ckpt).version == 2
    assert not old.exists()
    assert fresh.exists()  # maybe a registration in progress elsewhere


def test_object_store_protocol(ckpt: Path, tmp_path: Path) -> None:
    """A non-local pyarrow filesystem takes the copy-then-manifest path (no rename, no flock)."""
    fs = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    reg = Registry("store", filesystem=fs)
    assert _register(reg, ckpt).version == 1
    assert _register(reg, ckpt).version == 2
    vdir = tmp_path / "bucket" / "store" / "registry" / "digits" / "versions" / "2"
    assert (vdir / "extra" / "notes.txt").read_text() == "hello"
    assert not any((vdir.parent.parent / ".staging").iterdir())
    reg.set_alias("digits", 1, "production")
    mv = reg.get("digits@production")
    assert mv.uri == "store/registry/digits/versions/1"
    assert set(reg.load_weights(mv)) == {"weight", "bias"}
    # A crashed upload (files, no manifest) is skipped, not overwritten.
    (vdir.parent / "3").mkdir()
    (vdir.parent / "3" / "model.pt").write_bytes(b"partial")
    assert reg.get("digits").version == 2
    assert _register(reg, ckpt).version == 4
    reg.delete("digits", 2)
    assert [m.version for m in reg.list_versions("digits")] == [1, 4]


def test_root_forms(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    mv = Registry("~/store").register("digits", str(ckpt), metrics={}, spec={})
    assert mv.uri == str(tmp_path / "home" / "store" / "registry" / "digits" / "versions" / "1")
    by_uri = Registry(f"file://{tmp_path / 'home' / 'store'}")
    assert by_uri.get("digits").manifest == mv.manifest


# ------------------------------------------------------------------------------------------------
# The storage is a trust boundary (hostile manifests: tests/faults/test_registry_integrity.py)


@pytest.mark.parametrize("name, reason", [
    ("model.pt", None), ("extra/notes.txt", None), ("a/b/c..d", None), ("...", None), (".hidden", None),
    ("../x", "has a '.' or '..' segment"), ("a/../../x", "has a '.' or '..' segment"),
    ("./x", "has a '.' or '..' segment"), ("/etc/passwd", "is an absolute path"),
    ("a\\b", "holds a backslash"), ("C:x", "starts with a drive letter"), ("a//b", "has an empty path segment"),
    ("a/", "has an empty path segment"), ("a\0b", "holds a NUL byte"), ("", "is not a non-empty string"),
    (3, "is not a non-empty string"),
])
def test_file_names_must_stay_inside_the_version_folder(name: Any, reason: str | None) -> None:
    from atoll.registry.manifest import _escape_reason

    assert _escape_reason(name) == reason


def test_register_refuses_a_checkpoint_file_a_version_folder_cannot_hold(reg: Registry, ckpt: Path) -> None:
    (ckpt / "notes\\..\\x.txt").write_text("a backslash is a plain character on POSIX, a separator on Windows")
    with pytest.raises(RegistryError, match=r"checkpoint directory .*ckpt: the file name 'notes\\\\..\\\\x.txt' "
                                            r"holds a backslash, which a version folder cannot hold; rename"):
        _register(reg, ckpt)
    assert reg.list_models() == [] and not (Path(reg.root) / "registry" / "digits" / ".staging").exists()


def _sealed(path: Path) -> bool:
    from atoll.registry.manifest import _manifest_digest

    manifest = json.loads(path.read_text())
    return manifest["format"] == 2 and manifest["manifest_sha256"] == _manifest_digest(manifest)


def test_every_manifest_write_is_sealed(reg: Registry, ckpt: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen_pending = []
    real_copy = Registry._copy_in

    def watching_copy(self: Registry, *args: Any) -> dict[str, Any]:
        (staged,) = (Path(reg.root) / "registry" / "digits" / ".staging").iterdir()
        seen_pending.append(_sealed(staged / "manifest.json"))
        return real_copy(self, *args)

    monkeypatch.setattr(Registry, "_copy_in", watching_copy)
    v1 = _register(reg, ckpt)
    monkeypatch.undo()
    assert seen_pending == [True] * 3  # PENDING
    assert _sealed(Path(v1.uri) / "manifest.json") and v1.manifest["manifest_sha256"]  # READY
    _register(reg, ckpt)
    reg.delete("digits", 1)
    assert _sealed(Path(v1.uri) / "manifest.json")  # DELETED: the tombstone
    def failing_copy(self: Registry, *args: Any) -> dict[str, Any]:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Registry, "_copy_in", failing_copy)
    with pytest.raises(OSError):
        _register(reg, ckpt)
    monkeypatch.undo()
    (failed,) = reg.registrations("digits")
    assert _sealed(Path(reg.root) / "registry" / "digits" / ".staging" / failed.id / "manifest.json")  # FAILED
    fs = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    remote = Registry("store", filesystem=fs)
    _register(remote, ckpt)
    assert _sealed(tmp_path / "bucket" / "store" / "registry" / "digits" / "versions" / "1" / "manifest.json")
    assert remote.get("digits:1").version == 1


def test_an_unsealed_manifest_loads_only_as_a_legacy_format_1(reg: Registry, ckpt: Path) -> None:
    mv = _register(reg, ckpt)
    path = Path(mv.uri) / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["manifest_sha256"]
    path.write_text(json.dumps(manifest))  # format 2 without its seal: the field was removed
    with pytest.raises(RegistryError, match=r"^digits:1: its manifest.json has no manifest_sha256 \(format 2\), "
                                            r"so its manifest.json was tampered with"):
        reg.get("digits:1")
    path.write_text(json.dumps({**manifest, "format": 1}))  # written before manifests were sealed
    assert reg.get("digits:1").manifest["format"] == 1
    assert set(reg.load_weights(reg.get("digits:1"))) == {"weight", "bias"}


def test_a_manifest_copied_onto_another_version_is_refused(reg: Registry, ckpt: Path) -> None:
    v1, v2 = _register(reg, ckpt, metrics={"acc": 0.5}), _register(reg, ckpt, metrics={"acc": 0.9})
    (Path(v2.uri) / "manifest.json").write_bytes((Path(v1.uri) / "manifest.json").read_bytes())  # sealed, but 1's
    with pytest.raises(RegistryError, match=r"^digits:2: its manifest.json describes digits:1, so"):
        reg.get("digits:2")


def test_cli_show_of_a_tampered_version_is_one_line(cli: Any, reg: Registry) -> None:
    path = Path(reg.get("digits:2").uri) / "manifest.json"
    path.write_text(path.read_text().replace("0.95", "0.99"))
    shown = cli("show", "digits:2")
    assert shown.exit_code != 0 and isinstance(shown.exception, RegistryError)
    assert "\n" not in str(shown.exception) and "digits:2: its manifest.json does not match" in str(shown.exception)
    assert cli("show", "digits:1").exit_code == 0
    assert cli("delete", "digits:2", "--yes").exit_code == 0  # the fix its message names
    assert json.loads(cli("show", "digits", "--json").output)["version"] == 1


@pytest.mark.parametrize("model_type, entries, admitted", [
    ("mypkg.models:build", ["mypkg.models:build"], True),
    ("mypkg.models:other", ["mypkg.models:build"], False),
    ("mypkg.models:other", ["mypkg.models:*"], True),
    ("mypkg.models.sub:build", ["mypkg.models:*"], False),  # :* is one module, not its submodules
    ("mypkg:build", ["mypkg.*"], True),
    ("mypkg.a.b:build", ["mypkg.*"], True),
    ("mypkgevil:build", ["mypkg.*"], False),  # a prefix of the name is not the package
    ("os:system", ["mypkg.*", "other:build"], False),
    ("os:system", [], False),
])
def test_model_type_allow_list_entries(model_type: str, entries: list[str], admitted: bool) -> None:
    from atoll import models
    from atoll.model_types import AllowList

    allow = AllowList(tuple(entries), "cluster.yaml")
    assert allow.admits(model_type) is admitted
    if admitted:
        return
    with pytest.raises(ConfigError, match=rf"^digits:3: model.type '{model_type}' is not allowed"):
        models.resolve(model_type, registered="digits:3", allowed=allow)
    # Training resolves its own spec's type (no registered version): the list does not apply.
    assert models.resolve("atoll.models:MLP") is models.MLP


def test_cluster_yaml_model_types_are_checked(tmp_path: Path) -> None:
    from atoll import cluster

    text = (Path(__file__).resolve().parents[1] / "cluster.yaml").read_text()
    example = '    model_types: ["examples.keras_cnn:build"]'
    assert example in text  # this project allows its own example, and only that
    assert cluster.load_spec(Path(__file__).resolve().parents[1] / "cluster.yaml").atoll.model_types == [
        "examples.keras_cnn:build"]
    (tmp_path / "cluster.yaml").write_text(text.replace(example, '    model_types: ["mypkg.models:build"]'))
    assert cluster.load_spec(tmp_path / "cluster.yaml").atoll.model_types == ["mypkg.models:build"]
    for bad in ("mypkg", "mlp", "mypkg.models:build()", "../x:y", "*"):
        (tmp_path / "cluster.yaml").write_text(text.replace(example, f"    model_types: [{json.dumps(bad)}]"))
        with pytest.raises(ConfigError, match=rf"metadata.atoll.model_types: {re.escape(repr(bad))} is not an "
                                              rf"import path; use 'pkg.models:build'"):
            cluster.load_spec(tmp_path / "cluster.yaml")


# ------------------------------------------------------------------------------------------------
# Errors


def test_unknown_model_lists_models_and_suggests(reg: Registry, ckpt: Path) -> None:
    with pytest.raises(RegistryError, match="The registry is empty"):
        reg.get("digits")
    assert reg.list_models() == []
    _register(reg, ckpt, name="digits")
    _register(reg, ckpt, name="iris")
    with pytest.raises(RegistryError, match=r"no model named 'digit'.*Did you mean 'digits'\? "
                                            r"Models: digits, iris"):
        reg.get("digit")
    with pytest.raises(RegistryError, match="Models: digits, iris"):
        reg.list_versions("mnist")
    with pytest.raises(RegistryError, match="no model named 'mnist'"):
        reg.set_alias("mnist", 1, "production")
    assert not (Path(reg.root) / "registry" / "mnist").exists()  # no litter for a mistyped name


def test_unknown_version_and_alias_list_what_exists(reg: Registry, ckpt: Path) -> None:
    _register(reg, ckpt)
    _register(reg, ckpt)
    with pytest.raises(RegistryError, match="model 'digits' has no version 5; versions: 1, 2"):
        reg.get("digits:5")
    with pytest.raises(RegistryError, match="has no alias 'production'; it has none yet"):
        reg.get("digits@production")
    reg.set_alias("digits", 2, "staging")
    with pytest.raises(RegistryError, match="has no alias 'production'; aliases: @staging → 2"):
        reg.get("digits@production")


def test_missing_checkpoint_errors_name_path_and_fix(reg: Registry, tmp_path: Path, ckpt: Path) -> None:
    with pytest.raises(RegistryError, match=r"nowhere does not exist; pass the folder a training run wrote"):
        reg.register("digits", str(tmp_path / "nowhere"), metrics={}, spec={})
    with pytest.raises(RegistryError, match="is a file, not a directory"):
        reg.register("digits", str(ckpt / "model.pt"), metrics={}, spec={})
    (ckpt / "model.pt").unlink()
    with pytest.raises(RegistryError, match=r"has no model.safetensors; save the weights there with "
                                            r"safetensors.torch.save_file\(model.state_dict\(\), '.*model.safetensors'\) "
                                            r"\(or torch.save\(...\) to model.pt\)"):
        reg.register("digits", str(ckpt), metrics={}, spec={})
    assert reg.list_models() == []


@pytest.mark.parametrize("ref, expected", [
    ("digits", ("digits", None, None)),
    ("digits:3", ("digits", 3, None)),
    ("digits:012", ("digits", 12, None)),
    ("digits@production", ("digits", None, "production")),
    ("my.model_v2-b@canary-1", ("my.model_v2-b", None, "canary-1")),
])
def test_parse_ref_valid(ref: str, expected: tuple[str, int | None, str | None]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref, message", [
    ("", "empty model reference"),
    ("digits:", "version must be a positive integer"),
    ("digits:0", "version must be a positive integer"),
    ("digits:x", "version must be a positive integer"),
    ("digits:-1", "version must be a positive integer"),
    ("digits:1@prod", "both a version and an alias"),
    ("digits@", "invalid alias ''"),
    ("digits@bad alias", "invalid alias 'bad alias'"),
    ("_digits", "invalid model name '_digits'"),
    ("../etc", "invalid model name '../etc'"),
    ("a/b:1", "invalid model name 'a/b'"),
])
def test_parse_ref_invalid(ref: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_ref(ref)


# ------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reg: Registry, ckpt: Path) -> Any:
    """Invoke `atoll models ...` against the tmp registry, holding digits:1 and digits:2."""
    from atoll.cli.models import models_app
    from typer.testing import CliRunner

    monkeypatch.setenv("ATOLL_STORAGE", reg.root)
    monkeypatch.delenv("ATOLL_CLUSTER_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./cluster.yaml here: the built-in defaults apply
    _register(reg, ckpt, metrics={"val_accuracy": 0.91}, lineage={"git_commit": "deadbeef"})
    _register(reg, ckpt, metrics={"val_accuracy": 0.95})
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(models_app, list(args), **kw)


def test_cli_list_json(cli: Any) -> None:
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"name": "digits", "latest_version": 2, "versions": 2,
                                          "aliases": {}}]
    table = cli("list")
    assert table.exit_code == 0 and "digits" in table.output


def test_cli_show(cli: Any) -> None:
    result = cli("show", "digits:1")
    assert result.exit_code == 0, result.output
    for text in ("digits:1", "val_accuracy", "0.91", "git_commit", "deadbeef", "features", "model.pt"):
        assert text in result.output
    as_json = json.loads(cli("show", "digits", "--json").output)
    assert as_json["version"] == 2 and as_json["metrics"] == {"val_accuracy": 0.95}
    assert as_json["aliases"] == []
    missing = cli("show", "digits:7")
    assert missing.exit_code != 0 and isinstance(missing.exception, RegistryError)
    assert "versions: 1, 2" in str(missing.exception)


def test_cli_promote_and_delete(cli: Any, reg: Registry) -> None:
    result = cli("promote", "digits:1", "production")
    assert result.exit_code == 0, result.output
    assert reg.aliases("digits") == {"production": 1}
    moved = cli("promote", "digits:2", "production")
    assert "was digits:1" in moved.output and reg.get("digits@production").version == 2
    assert json.loads(cli("show", "digits@production", "--json").output)["aliases"] == ["production"]

    refused = cli("delete", "digits:2", "--yes")
    assert isinstance(refused.exception, RegistryError)
    assert "@production points at it" in str(refused.exception)
    aborted = cli("delete", "digits:1", input="n\n")
    assert aborted.exit_code != 0 and reg.get("digits:1").version == 1
    deleted = cli("delete", "digits:1", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert [mv.version for mv in reg.list_versions("digits")] == [2]
    bare = cli("delete", "digits", "--yes")
    assert isinstance(bare.exception, RegistryError) and "explicit version" in str(bare.exception)


def test_cli_list_versions_and_unready_registrations(cli: Any, reg: Registry) -> None:
    reg.set_alias("digits", 2, "production")
    _fake_staging(reg, "crashed", "FAILED", "h", 1)
    manifest = Path(reg.root) / "registry" / "digits" / ".staging" / "crashed" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "error": "OSError: disk full"}))
    ready = json.loads(cli("list", "digits", "--json").output)
    assert [(r["version"], r["state"], r["aliases"]) for r in ready] == \
        [(1, "READY", []), (2, "READY", ["production"])]
    every = json.loads(cli("list", "digits", "--all", "--json").output)
    assert every[:2] == ready
    assert {k: every[2][k] for k in ("version", "state", "id", "error")} == \
        {"version": None, "state": "FAILED", "id": "crashed", "error": "OSError: disk full"}
    table = cli("list", "digits", "--all")
    assert table.exit_code == 0, table.output
    for text in ("READY", "@production", "FAILED", "OSError:", "disk"):  # an 80-column table wraps
        assert text in table.output
    assert "FAILED" not in cli("list", "digits").output
    bare = cli("list", "--all")
    assert isinstance(bare.exception, RegistryError) and "pass its name" in str(bare.exception)
    unknown = cli("list", "digit", "--all")
    assert isinstance(unknown.exception, RegistryError) and "Did you mean 'digits'" in str(unknown.exception)


# ------------------------------------------------------------------------------------------------
# Issue 32, item 12: an aliases.json that is there but unreadable is not an empty one


@pytest.mark.parametrize("damage", ['{"production": 2, "staging": ', "[2, 1]", '{"production": "two"}'],
                         ids=["cut short", "not a map", "not a version"])
def test_an_unreadable_aliases_file_is_refused_never_written_over(cli: Any, reg: Registry, tmp_path: Path,
                                                                  damage: str) -> None:
    reg.set_alias("digits", 2, "production")
    reg.set_alias("digits", 1, "staging")
    aliases = tmp_path / "store" / "registry" / "digits" / "aliases.json"
    aliases.write_text(damage)
    for args in (["promote", "digits:2", "canary"], ["unalias", "digits", "staging"], ["show", "digits@production"]):
        result = cli(*args)
        assert result.exit_code == 1 and isinstance(result.exception, RegistryError), result.output
        said = str(result.exception)
        assert said.startswith(str(aliases)) and "\n" not in said and "left as it is" in said, said
    assert aliases.read_text() == damage  # every alias it held is still there to repair
    aliases.unlink()  # the fix the message names: without the file there are no aliases, and promote works
    assert cli("promote", "digits:2", "production").exit_code == 0
    assert reg.aliases("digits") == {"production": 2}


# ------------------------------------------------------------------------------------------------
# Issue 32, item 13: a checkpoint from elsewhere is held to the cluster's model-type allow-list


def test_register_refuses_a_model_type_the_cluster_does_not_allow_before_importing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atoll import cli
    from test_cli import write_checkpoint
    from typer.testing import CliRunner

    marker = tmp_path / "imported"
    code = tmp_path / "code"
    code.mkdir()
    (code / "foreign_model.py").write_text(  # what a foreign checkpoint's code could do the moment it is imported
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n\n\ndef build(**kw):\n    return None\n")
    monkeypatch.syspath_prepend(str(code))  # importable: only the allow-list stands in the way
    ckpt = write_checkpoint(tmp_path / "foreign")
    meta = json.loads((ckpt / "atoll.json").read_text())
    meta["spec"]["model"]["type"] = "foreign_model:build"
    (ckpt / "atoll.json").write_text(json.dumps(meta))
    monkeypatch.setenv("ATOLL_STORAGE", str(tmp_path / "storage"))

    result = CliRunner().invoke(cli.app, ["models", "register", "foreign", str(ckpt)])
    assert isinstance(result.exception, ConfigError), result.output
    said = str(result.exception)
    assert "model.type 'foreign_model:build' is not allowed" in said and "metadata.atoll.model_types" in said
    assert "\n" not in said and not marker.exists()
    assert not (tmp_path / "storage" / "registry" / "foreign").exists()


def _digit_rows(path: Path, value: float) -> Path:
    """Twenty rows in the columns of the demo's checkpoint (px0..px63, label), every pixel ``value``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {f"px{i}": [value] * 20 for i in range(64)}
    pq.write_table(pa.table({**columns, "label": [i % 10 for i in range(20)]}), path)
    return path


def test_register_takes_examples_only_from_data_the_caller_names(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from atoll import cli
    from test_cli import write_checkpoint
    from typer.testing import CliRunner

    private = _digit_rows(tmp_path / "private.parquet", 7.0)  # data of the registering user's machine
    ckpt = write_checkpoint(tmp_path / "foreign")
    meta = json.loads((ckpt / "atoll.json").read_text())
    meta["spec"]["dataset"]["path"] = str(private)  # a foreign checkpoint names it
    (ckpt / "atoll.json").write_text(json.dumps(meta))
    monkeypatch.setenv("ATOLL_STORAGE", str(tmp_path / "storage"))
    reg = Registry(str(tmp_path / "storage"))

    def registered(*options: str) -> ModelVersion:
        result = CliRunner().invoke(cli.app, ["models", "register", "foreign", str(ckpt), "--json", *options])
        assert result.exit_code == 0, result.output
        return reg.get(f"foreign:{json.loads(result.stdout)['version']}")

    bare = registered()
    assert "examples.json" not in bare.files  # nothing read from the path the checkpoint names
    assert bare.spec["dataset"]["path"] == str(private)  # the spec is recorded as it came

    chosen = registered("--examples", str(_digit_rows(tmp_path / "chosen.parquet", 3.0)))
    shown = json.loads(reg.read_file(chosen, "examples.json"))["examples"]
    assert shown and all(set(e["inputs"]) == {3.0} for e in shown)  # the caller's rows, every one of them
    refused = CliRunner().invoke(cli.app, ["models", "register", "foreign", str(ckpt), "--examples", "nope.parquet"])
    assert isinstance(refused.exception, ConfigError) and "--examples nope.parquet: no such file" in str(refused.exception)
