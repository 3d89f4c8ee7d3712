"""What the registry hands out: a :class:`ModelVersion` (one READY version: where it lives and its
manifest) and a :class:`Registration` (PENDING or FAILED, no number yet); and the checks a version's files
pass when they are read back (listed in the manifest, present, the recorded sha256)."""

from __future__ import annotations

import dataclasses
from typing import Any

from atoll.errors import RegistryError


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered version: where it lives and its manifest (metrics, spec, lineage, files)."""

    name: str
    version: int
    uri: str
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics") or {}

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest.get("spec") or {}

    @property
    def input_schema(self) -> dict[str, Any] | None:
        return self.manifest.get("input_schema")

    @property
    def lineage(self) -> dict[str, Any]:
        return self.manifest.get("lineage") or {}

    @property
    def exports(self) -> dict[str, dict[str, Any]]:
        """Per format (``pt2``, ``onnx``): the artefact's file and its recorded parity, or why there is none."""
        return self.manifest.get("exports") or {}

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.manifest.get("files") or {}

    @property
    def created_at(self) -> str | None:
        return self.manifest.get("created_at")

    def to_dict(self) -> dict[str, Any]:
        """The manifest plus ``ref`` and ``uri``, ready for ``json.dumps``."""
        return {"ref": self.ref, "uri": self.uri, **self.manifest, "name": self.name, "version": self.version}


@dataclasses.dataclass(frozen=True)
class Registration:
    """A registration that is not a version: ``PENDING`` (being written) or ``FAILED``; it has no number."""

    name: str
    id: str
    state: str
    writer: dict[str, Any]
    error: str | None
    manifest: dict[str, Any]

    @property
    def started_at(self) -> str | None:
        return self.writer.get("started_at") or self.manifest.get("created_at")

    def to_dict(self) -> dict[str, Any]:
        """What ``atoll models list NAME --all --json`` prints for it."""
        return {"name": self.name, "version": None, "id": self.id, "state": self.state, "writer": self.writer,
                "started_at": self.started_at, "error": self.error, "metrics": self.manifest.get("metrics")}


def _file_meta(mv: ModelVersion, filename: str) -> dict[str, Any]:
    files = mv.files
    if filename not in files:
        raise RegistryError(f"{mv.ref} has no file {filename!r}; files: {', '.join(sorted(files))}.")
    return files[filename]


def _check_digest(mv: ModelVersion, rel: str, sha256: str, size: int) -> None:
    """Refuse a file whose sha256 is not the one recorded at registration."""
    expected = mv.files[rel]
    if sha256 == expected["sha256"]:
        return
    recorded = expected.get("size")
    truncated = isinstance(recorded, int) and size < recorded
    how = f"truncated to {size:,} of {recorded:,} bytes" if truncated else \
        f"sha256 {sha256[:12]}…, recorded {expected['sha256'][:12]}…"
    raise RegistryError(f"{mv.ref}: {rel} in {mv.uri} does not match the sha256 recorded at registration "
                        f"({how}): the file was changed or corrupted and is refused. Register the model "
                        f"again from its checkpoint.")


def _missing(mv: ModelVersion, rel: str) -> RegistryError:
    return RegistryError(f"{mv.ref}: {rel} is missing from {mv.uri} (deleted?); register the model again.")
