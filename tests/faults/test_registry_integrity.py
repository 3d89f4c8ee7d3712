"""Registry integrity under real faults (issue 9, group "registry"): SIGKILL during register, concurrent
publishers in separate processes, tampered and truncated weights; and the storage as a trust boundary
(issue 15): manifests whose file names leave the version folder, flipped bytes in manifest.json, and model
types a manifest names that cluster.yaml does not allow. Pure filesystem: no Ray, tmp_path only.

The writers are real child processes (``sys.executable`` running a script written to tmp_path) that import
only ``atoll.registry`` (pyarrow, no torch), so each starts in a fraction of a second.
"""

from __future__ import annotations

import ast
import json
import os
import posixpath
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pytest
import yaml
from atoll.data import Preprocessor
from atoll.errors import ConfigError, RegistryError
from atoll.registry import ModelVersion, Registry, TamperedManifestError
from atoll.registry.manifest import _seal
from atoll.registry.publish import CLAIM
from atoll.tasks.base import BUILTIN_MODELS

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "atoll"

# Registers CKPT as NAME and SIGKILLs itself at its KILL_AT-th IO event (0: never); prints the events.
# The instrumentation lives here, in the child only: every output-stream open/write/close, folder creation,
# os.rename and os.replace of the registry is one event (renames and replaces also one right after).
KILLABLE_WRITER = r'''
import json, os, signal, sys

import atoll.registry as registry
import atoll.registry.store as store
from atoll import filesystems

root, ckpt, name, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
events = []


def event(label):
    events.append(label.replace(root, "<root>"))
    if len(events) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


class Stream:
    def __init__(self, inner, path):
        self.inner, self.path = inner, path

    def write(self, data):
        event(f"write {self.path}")
        return self.inner.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        event(f"close {self.path}")
        self.inner.close()


class CountingFS:
    def __init__(self, inner):
        self.inner = inner

    def open_output_stream(self, path, **kw):
        event(f"open {path}")
        return Stream(self.inner.open_output_stream(path, **kw), path)

    def create_dir(self, path, **kw):
        event(f"mkdir {path}")
        return self.inner.create_dir(path, **kw)

    def copy_file(self, src, dst):  # an object store's publish (server-side copy)
        event(f"copy {src} -> {dst}")
        return self.inner.copy_file(src, dst)

    def delete_dir(self, path):
        event(f"rmdir {path}")
        return self.inner.delete_dir(path)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


def counted(fn, what):
    def wrapper(src, dst, *args, **kw):
        event(f"{what} {src} -> {dst}")
        out = fn(src, dst, *args, **kw)
        event(f"after {what} {dst}")
        return out
    return wrapper


def conditional(fn, what):  # S3's conditional PUTs (the version claim)
    def wrapper(fs, path, *args, **kw):
        event(f"{what} {path}")
        return fn(getattr(fs, "inner", fs), path, *args, **kw)
    return wrapper


os.rename, os.replace = counted(os.rename, "rename"), counted(os.replace, "replace")
filesystems.put_if_absent = conditional(filesystems.put_if_absent, "claim")
filesystems.put_if_unchanged = conditional(filesystems.put_if_unchanged, "swap")
store._CHUNK = 1 << 17  # a few write events inside model.pt
reg = registry.Registry(root)
reg._folders.fs = CountingFS(reg._folders.fs)
mv = reg.register(name, ckpt, metrics={"kill_at": kill_at}, spec={})
print(json.dumps({"version": mv.version, "events": events}))
'''

# Waits for the start file, then registers CKPT as "digits" with its tag in the metrics.
PUBLISHER = r'''
import json, os, sys, time

from atoll.registry import Registry

root, ckpt, tag, start = sys.argv[1:5]
open(f"{start}.{tag}.ready", "w").close()
while not os.path.exists(start):
    time.sleep(0.001)
mv = Registry(root).register("digits", ckpt, metrics={"writer": int(tag)}, spec={}, lineage={"run_name": tag})
print(json.dumps({"version": mv.version}))
'''


def _checkpoint(path: Path, value: float, size: int = 512) -> Path:
    """model.pt (a state dict of about size*size*4 bytes, filled with value), atoll.json and two extras."""
    import torch

    (path / "extra").mkdir(parents=True)
    torch.save({"w": torch.full((size, size), value), "b": torch.tensor([value])}, path / "model.pt")
    (path / "atoll.json").write_text(json.dumps({"input_schema": {"features": size}, "value": value}))
    (path / "extra" / "notes.txt").write_text(f"checkpoint {value}")
    (path / "extra" / "vocab.bin").write_bytes(os.urandom(3000))
    return path


def _stored_files(reg: Registry, folder: str) -> set[str]:
    """The files under a registry folder, relative to it, as the store lists them (a disk or S3)."""
    return {posixpath.relpath(i.path, folder) for i in reg._folders.listing(folder, recursive=True)
            if i.type == pafs.FileType.File}


def _verify_all(reg: Registry, name: str = "digits") -> list[int]:
    """Every READY version verifies (all files against their sha256, weights load); return their numbers.

    Also checks the store: every versions/N folder is a complete READY version, no partial one. On S3 a
    folder may also hold only a dead writer's claim (and what it copied before its manifest): no manifest,
    so invisible, and the next publisher takes that number over.
    """
    versions = reg.list_versions(name)
    claim = {CLAIM} if reg._folders.conditional else set()
    for mv in versions:
        assert set(reg.load_weights(mv)) == {"w", "b"}
        for rel in mv.files:
            reg.read_file(mv, rel)
        stored = _stored_files(reg, reg._folders.version_dir(name, mv.version))
        assert stored == {*mv.files, "manifest.json", *claim}, (mv.ref, stored)
    ready = [mv.version for mv in versions]
    for number in set(reg._folders.version_numbers(name)) - set(ready):  # no folder that is not a READY version
        stored = _stored_files(reg, reg._folders.version_dir(name, number))
        assert claim and CLAIM in stored and "manifest.json" not in stored and number == max(ready, default=0) + 1, \
            (number, stored)
    return ready


@pytest.fixture(params=["local", "s3"])
def store_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage root on a local disk, or on the session's S3 server (SeaweedFS)."""
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_store")
    return f"s3://atoll-test/{request.node.name.replace('[', '-').rstrip(']')}-{uuid.uuid4().hex[:8]}"


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def _kill_points(events: list[str], publish: int, at_least: int = 20) -> list[int]:
    """Every event (1-based) when there are few enough, else a spread including both sides of the publish."""
    n = len(events)
    if n <= 2 * at_least:
        return list(range(1, n + 1))
    spread = {round(1 + i * (n - 1) / (at_least - 1)) for i in range(at_least)}
    return sorted(spread | {publish - 1, publish, min(publish + 1, n)})


def _publish_points(events: list[str], remote: bool) -> tuple[int, int]:
    """(staged, publish): the first event at which the staging folder exists (it names its writer), and the
    event a kill at which still leaves the version unpublished while any later one leaves it READY: the
    rename of staging onto versions/N on a disk, the PUT (stream close) of versions/N/manifest.json on S3."""
    if remote:
        staged = 1 + next(i for i, e in enumerate(events, 1) if e.startswith("close") and "/.staging/" in e)
        publish = next(i for i, e in enumerate(events, 1) if e == "close <root>/registry/digits/versions/1/manifest.json")
        return staged, publish
    staged = next(i for i, e in enumerate(events, 1) if e.startswith("after rename") and "/.staging/" in e)
    publish = next(i for i, e in enumerate(events, 1) if e.startswith("rename") and "/versions/" in e)
    assert events[publish] == "after rename <root>/registry/digits/versions/1"  # the last kill point
    return staged, publish


def test_sigkill_at_every_point_of_register(store_root: str, tmp_path: Path, reliability: Callable[..., None]) -> None:
    script = tmp_path / "writer.py"
    script.write_text(KILLABLE_WRITER)
    reg = Registry(store_root)
    remote = not reg._folders.local
    # On S3 every kill point costs a round of requests: a smaller model and fewer points, both sides of the publish.
    ckpt = _checkpoint(tmp_path / "ckpt", 1.0, size=128 if remote else 512)
    dry = _run(script, store_root, str(ckpt), "digits", "0")  # counts the events; publishes digits:1
    assert dry.returncode == 0, dry.stderr
    # Paths as the store names them (S3's without the scheme), the root shown as <root>.
    events = [e.replace(reg._folders.base.removesuffix("/registry"), "<root>") for e in json.loads(dry.stdout)["events"]]
    staged, publish = _publish_points(events, remote)
    points = _kill_points(events, publish, at_least=8 if remote else 20)
    assert len(points) >= (8 if remote else 20) and points[0] == 1 and points[-1] == len(events)

    started = time.monotonic()
    failed_before, before = 0, _verify_all(reg)
    for k in points:
        child = subprocess.Popen([sys.executable, str(script), store_root, str(ckpt), "digits", str(k)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, (k, events[k - 1], err)
        published = k > publish  # killed right after the rename (S3: the manifest PUT): whole and READY
        expected = before + [before[-1] + 1] if published else before
        assert _verify_all(reg) == expected, (k, events[k - 1])
        registrations = reg.registrations("digits")
        assert all(r.state == "FAILED" for r in registrations), (k, events[k - 1], registrations)
        if staged <= k <= publish:  # its staging folder existed: reported, with the dead writer's pid
            assert len(registrations) == failed_before + 1, (k, events[k - 1])
            assert any(r.writer["pid"] == child.pid and r.error.startswith("writer died")
                       for r in registrations)
        else:  # killed before its staging folder appeared, or after the publish
            assert len(registrations) == failed_before, (k, events[k - 1])
        failed_before = len(registrations)
        nxt = reg.register("digits", str(ckpt), metrics={"after_kill": k}, spec={})
        assert nxt.version == expected[-1] + 1  # consecutive: the crash burned no number
        before = [*expected, nxt.version]
    elapsed = time.monotonic() - started

    final = _verify_all(reg)
    assert final == list(range(1, len(final) + 1))
    every = "every IO event" if len(points) == len(events) else f"of {len(events)} IO events"
    where = "on S3 (SeaweedFS), both sides of the manifest PUT" if remote else "both sides of the publish rename"
    reliability("registry", f"SIGKILL during register at {len(points)} points ({every}, {where})",
                f"0 partial versions visible, {len(points)}/{len(points)} next registrations got the next "
                f"consecutive number, versions 1..{len(final)} all verified, {failed_before} dead writers "
                f"listed as FAILED ({elapsed:.1f} s)", "pass")


@pytest.mark.parametrize("n", [2, 8])
def test_concurrent_publishers_get_distinct_consecutive_versions(n: int, store_root: str, tmp_path: Path,
                                                                 reliability: Callable[..., None]) -> None:
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    reg = Registry(store_root)
    start = tmp_path / "start"
    ckpts = [_checkpoint(tmp_path / f"ckpt{i}", float(i), size=128) for i in range(n)]
    procs = [subprocess.Popen([sys.executable, str(script), reg.root, str(ckpts[i]), str(i), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("start.*.ready"))) < n:  # all imported and waiting
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.01)
        start.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    got = {i: json.loads(out)["version"] for i, (out, _) in enumerate(outputs)}

    assert sorted(got.values()) == list(range(1, n + 1))  # distinct and consecutive
    assert _verify_all(reg) == list(range(1, n + 1))  # complete
    for i, version in got.items():  # each writer got the version holding what it wrote
        mv = reg.get(f"digits:{version}")
        assert mv.metrics == {"writer": i} and mv.lineage == {"run_name": str(i)}
        assert float(reg.load_weights(mv)["b"][0]) == float(i)
        assert json.loads(reg.read_file(mv, "atoll.json"))["value"] == float(i)
    assert reg.registrations("digits") == []
    where = "on S3 (SeaweedFS, conditional PUTs)" if store_root.startswith("s3://") else "on a local disk"
    reliability("registry", f"{n} concurrent publishers of one name {where} (separate processes, started together)",
                f"versions 1..{n}, distinct and consecutive, all {n} verified (sha256 + weights) and each "
                f"holding its own writer's content", "pass")


def test_tampered_or_truncated_weights_are_refused(tmp_path: Path, reliability: Callable[..., None]) -> None:
    reg = Registry(str(tmp_path / "store"))
    ckpt = _checkpoint(tmp_path / "ckpt", 1.0, size=128)
    tampered, truncated = (reg.register("digits", str(ckpt), metrics={}, spec={}) for _ in range(2))
    weights = Path(tampered.uri) / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte, inside the tensor data: still loadable by torch
    weights.write_bytes(bytes(data))
    short = Path(truncated.uri) / "model.pt"
    size = short.stat().st_size
    short.write_bytes(short.read_bytes()[: size // 2])

    refused = 0
    for mv, how in [(tampered, r"sha256 [0-9a-f]{12}…, recorded [0-9a-f]{12}…"),
                    (truncated, f"truncated to {size // 2:,} of {size:,} bytes")]:
        message = rf"^{mv.ref}: model.pt in {mv.uri} does not match the sha256 recorded at registration " \
                  rf"\({how}\): the file was changed or corrupted and is refused. Register the model again " \
                  rf"from its checkpoint.$"
        with pytest.raises(RegistryError, match=message):
            reg.load_weights(mv)
        dest = tmp_path / f"copy{mv.version}"
        with pytest.raises(RegistryError, match=message):
            reg.local_copy(mv, dest)
        assert not (dest / "model.pt").exists() and not list(dest.rglob("*.part"))  # nothing unverified
        refused += 2

    reliability("registry", "one flipped byte in model.pt; model.pt truncated to half",
                f"{refused}/4 loads refused (load_weights, local_copy) with the version, file and fix named; "
                f"no file left behind", "pass")


def test_no_unsafe_unpickling_anywhere(tmp_path: Path, reliability: Callable[..., None]) -> None:
    import torch

    # A version whose model.pt is a pickle that would run code: registered as is, so its sha256 matches.
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"w": Payload()}, ckpt / "model.pt")
    reg = Registry(str(tmp_path / "store"))
    mv = reg.register("evil", str(ckpt), metrics={}, spec={})
    with pytest.raises(RegistryError, match=r"^evil:1: model.pt is not a loadable state dict"):
        reg.load_weights(mv)
    assert not marker.exists()  # refused by weights_only=True, not run

    # And no code path can unpickle unsafely: every torch.load in the package passes weights_only=True.
    loads, unsafe = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                if (owner, node.func.attr) == ("torch", "load"):
                    loads += 1
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                               and k.value.value is True for k in node.keywords)
                    if not safe:
                        unsafe.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
                elif owner in ("pickle", "cloudpickle", "dill") and node.func.attr in ("load", "loads"):
                    unsafe.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert loads >= 1 and unsafe == [], unsafe
    reliability("registry", "model.pt holding a code-running pickle (sha256 valid)",
                f"refused, payload not run; {loads}/{loads} torch.load calls in the package use "
                f"weights_only=True, no pickle.load", "pass")


# ------------------------------------------------------------------------------------------------
# The storage is not trusted: what a manifest says is checked before it is used


def _manifest_path(mv: ModelVersion) -> Path:
    return Path(mv.uri) / "manifest.json"


def _rewrite(mv: ModelVersion, change: Callable[[dict[str, Any]], None], *, reseal: bool = True) -> None:
    """Edit a version's manifest on disk; resealed, as a writer who knows the format would."""
    manifest = json.loads(_manifest_path(mv).read_text())
    change(manifest)
    _manifest_path(mv).write_text(json.dumps(_seal(manifest) if reseal else manifest, indent=2))


ESCAPING_NAMES = ["../x", "/etc/passwd", "extra/../../../x", "..", "a//b", "./model.pt", "extra\\..\\..\\x",
                  "C:/Windows/x", "a\x00b", ""]


def test_manifest_file_names_that_leave_the_version_folder_are_refused(tmp_path: Path,
                                                                       reliability: Callable[..., None]) -> None:
    reg = Registry(str(tmp_path / "store"))
    good = reg.register("digits", str(_checkpoint(tmp_path / "ckpt", 1.0, size=8)), metrics={}, spec={})
    outside = tmp_path / "x"  # where "../x" would land from the copy folder
    refused = 0
    for name in ESCAPING_NAMES:
        def swap(manifest: dict[str, Any], name: str = name) -> None:
            manifest["files"][name] = manifest["files"].pop("extra/notes.txt")

        _rewrite(good, swap)
        message = rf"^digits:1: its manifest names the file {re.escape(repr(name))}, which .+ \(a path " \
                  rf"outside the version folder\), so its manifest.json was tampered with or corrupted after " \
                  rf"registration and the version is refused. Delete it \(`atoll models delete digits:1`\) " \
                  rf"and register the model again.$"
        with pytest.raises(TamperedManifestError, match=message):
            reg.get("digits:1")
        # A version read before the edit (or built by hand) is refused at the join itself, before any IO.
        held = ModelVersion("digits", 1, good.uri, json.loads(_manifest_path(good).read_text()))
        dest = tmp_path / "copy"
        with pytest.raises(TamperedManifestError, match=message):
            reg.read_file(held, name)
        with pytest.raises(TamperedManifestError, match=message):
            reg.local_copy(held, dest)
        refused += 2
        assert not outside.exists() and not dest.exists()  # nothing written, inside or outside
        _rewrite(good, lambda m, name=name: m["files"].__setitem__("extra/notes.txt", m["files"].pop(name)))
    assert reg.get("digits:1").files == good.files  # restored: the same version loads again
    assert set(reg.load_weights(reg.get("digits:1"))) == {"w", "b"}
    reliability("registry", f"manifest file names that leave the version folder ({len(ESCAPING_NAMES)} kinds: "
                f"../x, /etc/passwd, nested .., backslashes, drive letter, empty segment, NUL, ...), resealed",
                f"every one refused when the version is read, and {refused}/{refused} loads of a version held "
                f"from before (read_file, local_copy) refused at the join; no file written", "pass")


def test_a_delete_racing_an_alias_move_on_s3_never_leaves_an_alias_on_a_deleted_version(
        s3_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reliability: Callable[..., None]) -> None:
    """S3 has no lock: each side checks again after its own write. Both worst interleavings are forced, by
    running the other publisher (a second Registry) from inside the first one's window."""
    root = f"s3://atoll-test/race-{uuid.uuid4().hex[:8]}"
    deleter, mover = Registry(root), Registry(root)
    ckpt = _checkpoint(tmp_path / "ckpt", 1.0, size=8)
    for _ in range(3):
        deleter.register("digits", str(ckpt), metrics={}, spec={})
    deleter.set_alias("digits", 1, "production")
    read_aliases, require_version = Registry._read_aliases, Registry._require_version

    # 1. The delete of v2 reads the aliases (none on v2), then @production moves to v2, then the tombstone.
    def move_after_the_check(self, name):
        found = read_aliases(self, name)
        if self is deleter and not moved:
            moved.append(mover.promote("digits:2", "production"))
        return found

    moved: list = []
    monkeypatch.setattr(Registry, "_read_aliases", move_after_the_check)
    with pytest.raises(RegistryError, match=r"cannot delete digits:2: @production was just pointed at it"):
        deleter.delete("digits", 2)
    monkeypatch.setattr(Registry, "_read_aliases", read_aliases)
    assert moved and deleter.get("digits@production").version == 2
    assert _verify_all(deleter) == [1, 2, 3]  # v2 is whole again: manifest back, every file there

    # 2. The move of @production to v3 checks v3, then the whole delete of v3 runs, then the move writes.
    def delete_before_the_write(self, name, version):
        found = require_version(self, name, version)
        calls.append(version)
        if self is mover and len(calls) == 2:  # the check inside set_alias, right before the write
            deleter.delete(name, version)
        return found

    calls: list[int] = []
    monkeypatch.setattr(Registry, "_require_version", delete_before_the_write)
    with pytest.raises(RegistryError, match=r"cannot point @production at digits:3: it was deleted meanwhile"):
        mover.set_alias("digits", 3, "production")
    monkeypatch.setattr(Registry, "_require_version", require_version)
    assert deleter.aliases("digits") == {"production": 2}  # back where it pointed
    assert [mv.version for mv in deleter.list_versions("digits")] == [1, 2]
    reliability("registry", "a delete and an alias move of one model race on S3 (both worst interleavings forced)",
                "alias moved first: the delete refused and the version left whole; delete first: the move "
                "refused and the alias put back; never an alias on a deleted version", "pass")


def test_every_flipped_byte_of_a_manifest_is_refused(tmp_path: Path, reliability: Callable[..., None]) -> None:
    reg = Registry(str(tmp_path / "store"))
    ckpt = _checkpoint(tmp_path / "ckpt", 1.0, size=8)
    first = reg.register("digits", str(ckpt), metrics={"val_accuracy": 0.91}, spec={"model": {"type": "mlp"}})
    second = reg.register("digits", str(ckpt), metrics={"val_accuracy": 0.95}, spec={"model": {"type": "mlp"}})
    original = _manifest_path(second).read_bytes()
    outcomes = {"checksum": 0, "not JSON": 0, "not READY": 0}
    for i in range(len(original)):
        flipped = bytearray(original)
        flipped[i] ^= 0x01  # the low bit: 2 → 3, READY → SEADY, a → `, a space → !
        _manifest_path(second).write_bytes(bytes(flipped))
        with pytest.raises(RegistryError) as refusal:
            reg.get("digits:2")
        text = str(refusal.value)
        assert "\n" not in text
        if isinstance(refusal.value, TamperedManifestError):
            outcomes["checksum"] += 1
        elif "is not a JSON object" in text:
            outcomes["not JSON"] += 1
        else:
            assert "its publish never finished" in text, (i, text)
            outcomes["not READY"] += 1
    flips = len(original)
    assert sum(outcomes.values()) == flips and outcomes["checksum"] > flips // 4

    # Refused as the latest too (no silent fallback to digits:1); the rest of the model keeps working.
    flipped = original.replace(b'"val_accuracy": 0.95', b'"val_accuracy": 0.99')
    assert flipped != original
    _manifest_path(second).write_bytes(flipped)
    shown = r"digits:2: its manifest.json does not match the manifest_sha256 recorded in it \([0-9a-f]{12}…, " \
            r"recorded [0-9a-f]{12}…\), so its manifest.json was tampered with"
    for read in (lambda: reg.get("digits"), lambda: reg.list_versions("digits"),
                 lambda: reg.set_alias("digits", 2, "production")):
        with pytest.raises(TamperedManifestError, match=shown):
            read()
    assert reg.get("digits:1").manifest == first.manifest and reg.aliases("digits") == {}
    reg.delete("digits", 2)  # the fix the message names works on a refused version
    assert reg.get("digits").version == 1
    with pytest.raises(RegistryError, match=r"no version 2: it was deleted at"):
        reg.get("digits:2")
    assert json.loads(_manifest_path(second).read_text())["status"] == "DELETED"
    reliability("registry", f"every byte of a READY manifest.json flipped, one at a time (its low bit; "
                f"{flips} bytes)",
                f"{flips}/{flips} refused with one line ({outcomes['checksum']} by manifest_sha256, "
                f"{outcomes['not JSON']} no longer JSON, {outcomes['not READY']} no longer READY); never served "
                f"as the latest, and deletable", "pass")


# A module that records its own import: if the registry's manifest could make a replica import it, the
# marker file would appear.
PROBE_MODULE = r"""
import pathlib

pathlib.Path({marker!r}).write_text("imported")


def build(input_dim, num_classes, **params):
    import torch

    return torch.nn.Linear(input_dim, num_classes)
"""


@pytest.fixture
def probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Two importable modules on sys.path: ``atoll_probe_evil`` and the package ``atoll_probe_user.models``,
    each writing a marker file when imported. Returns the markers."""
    mods = tmp_path / "mods"
    (mods / "atoll_probe_user").mkdir(parents=True)
    markers = {"evil": tmp_path / "evil-imported", "user": tmp_path / "user-imported"}
    (mods / "atoll_probe_evil.py").write_text(PROBE_MODULE.format(marker=str(markers["evil"])))
    (mods / "atoll_probe_user" / "__init__.py").write_text("")
    (mods / "atoll_probe_user" / "models.py").write_text(PROBE_MODULE.format(marker=str(markers["user"])))
    monkeypatch.syspath_prepend(str(mods))
    yield markers
    for name in ("atoll_probe_evil", "atoll_probe_user", "atoll_probe_user.models"):
        sys.modules.pop(name, None)


def _cluster_yaml(tmp_path: Path, model_types: list[str] | None) -> Path:
    """This repository's cluster.yaml, with ``metadata.atoll.model_types`` set (None: left out)."""
    config = yaml.safe_load((PACKAGE.parents[1] / "cluster.yaml").read_text())
    config["metadata"]["atoll"].pop("model_types", None)
    if model_types is not None:
        config["metadata"]["atoll"]["model_types"] = model_types
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _user_model_version(reg: Registry, tmp_path: Path, model_type: str) -> ModelVersion:
    """A servable version (weights, preprocessing, input schema) whose spec names ``model_type``."""
    import torch

    ckpt = tmp_path / f"ckpt-{len(list(tmp_path.glob('ckpt-*')))}"
    ckpt.mkdir()
    torch.save(torch.nn.Linear(4, 3).state_dict(), ckpt / "model.pt")
    features = [f"f{i}" for i in range(4)]
    pre = Preprocessor(features=features, label="label", mean=[0.0] * 4, std=[1.0] * 4, classes=[0, 1, 2])
    (ckpt / "atoll.json").write_text(json.dumps({"preprocess": pre.to_dict(), "input_schema": {
        "features": features, "num_features": 4}}))
    return reg.register("user", str(ckpt), metrics={}, spec={"model": {"type": model_type, "params": {}}})


def test_a_model_type_cluster_yaml_does_not_allow_is_refused_and_not_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probes: dict[str, Path],
        reliability: Callable[..., None]) -> None:
    from atoll.serving.predictor import Predictor

    reg = Registry(str(tmp_path / "store"))
    monkeypatch.setenv("ATOLL_CLUSTER_CONFIG", str(_cluster_yaml(tmp_path, ["atoll_probe_user.*"])))
    cases = 0
    for model_type in ("atoll_probe_evil:build", "os:system", "subprocess:getoutput", "atoll_probe_user_x:build"):
        mv = _user_model_version(reg, tmp_path, model_type)
        with pytest.raises(ConfigError, match=rf"^{mv.ref}: model.type '{model_type}' is not allowed: a registered "
                                              rf"version may name only a built-in model \({', '.join(BUILTIN_MODELS)}\) or a type "
                                              rf"cluster.yaml allows.* add \"{model_type}\" to "
                                              rf"metadata.atoll.model_types in .*cluster.yaml \(it lists "
                                              rf"atoll_probe_user\.\*\)\.$"):
            Predictor(reg.root, mv.ref, device="cpu")
        cases += 1
    assert not probes["evil"].exists() and "atoll_probe_evil" not in sys.modules  # refused before the import

    # The user's own model, on the list (a package prefix): imported and served.
    allowed = _user_model_version(reg, tmp_path, "atoll_probe_user.models:build")
    predictor = Predictor(reg.root, allowed.ref, device="cpu")
    labels, probabilities = predictor.predict(np.zeros((2, 4), dtype=np.float32))
    assert probes["user"].exists() and len(labels) == 2 and len(probabilities[0]) == 3

    # With no list at all, the message gives the exact line to add; adding it makes the version servable.
    evil = reg.get("user:1")
    monkeypatch.setenv("ATOLL_CLUSTER_CONFIG", str(_cluster_yaml(tmp_path, None)))
    with pytest.raises(ConfigError) as refused:
        Predictor(reg.root, evil.ref, device="cpu")
    line = re.search(r"add `(model_types: \[.*?\])` under metadata.atoll in (\S+)\.$", str(refused.value))
    assert line and line[1] == 'model_types: ["atoll_probe_evil:build"]' and line[2] == str(tmp_path / "cluster.yaml")
    assert not probes["evil"].exists()
    monkeypatch.setenv("ATOLL_CLUSTER_CONFIG", str(_cluster_yaml(tmp_path, yaml.safe_load(line[1])["model_types"])))
    assert Predictor(reg.root, evil.ref, device="cpu").version.ref == "user:1"
    assert probes["evil"].exists()  # allowed now, so imported: the marker proves the refusals above held
    reliability("registry", f"a manifest naming a model.type cluster.yaml does not allow ({cases} kinds: a module "
                f"on sys.path, os:system, subprocess:getoutput, a look-alike of an allowed prefix)",
                f"{cases}/{cases} refused before import (the probe module's import marker never appeared), with "
                f"the cluster.yaml line to add; the allowed user model and, once its line was added, the "
                f"refused one loaded and predicted", "pass")
