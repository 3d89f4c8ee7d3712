"""The model registry: immutable, numbered versions of trained models, with aliases and checksums.

Layout under the storage root (a local directory or an ``s3://`` / ``gs://`` URI)::

    <root>/registry/<name>/versions/<N>/model.safetensors   weights (safetensors; model.pt from older Atoll)
    <root>/registry/<name>/versions/<N>/...            every other file of the checkpoint (atoll.json, ...)
    <root>/registry/<name>/versions/<N>/manifest.json  written last: metrics, spec, lineage, file sha256s
    <root>/registry/<name>/aliases.json                {"production": 3, ...}

A version is visible only once its ``manifest.json`` exists and says ``"status": "READY"``, so a crash in
the middle of a registration never shows a half-written version. Files are first written to
``<root>/registry/<name>/.staging/<uuid>/`` and then published:

* on a local filesystem by ``os.rename(staging, versions/N)``, which fails when ``versions/N`` already
  exists; the writer then retries with N+1, so concurrent registrations (threads or processes) get distinct,
  consecutive versions;
* on an object store (no atomic rename) by copying the files to ``versions/N/`` and writing the manifest
  last. Concurrent registrations of the same name from several writers are best effort there: a version
  number whose folder already holds objects is skipped, and the recorded sha256 catches any clobbered file.

The storage root is a trust boundary: what a manifest says is checked before it is used. Every manifest
carries ``manifest_sha256``, the SHA-256 of its canonical JSON without that field, in the same file (one
atomic write or PUT: no window where a manifest and a separate checksum disagree); a READY manifest that
does not match it is refused. A file name a manifest lists (or a checkpoint holds) must stay inside the
version folder: no absolute path, ``..``, empty segment, backslash, drive letter or NUL. And the
``model.type`` it names is imported by a replica only when it is a built-in or on cluster.yaml's
``metadata.atoll.model_types`` (:mod:`atoll.models`). The checksum is not a signature (whoever can write
the root can recompute it); it catches edits and corruption, and the other two checks keep a writer of
the root from reaching outside a version folder or running code.

Deleting a version keeps its manifest as a tombstone (``"status": "DELETED"``) and removes its files, so a
version number is never reused. All IO goes through :mod:`pyarrow.fs`.

States of a registration (the ``status`` of its manifest):

* ``PENDING``: the first thing ``register`` writes is ``.staging/<id>/manifest.json`` saying PENDING and who
  writes (``writer``: host, pid, started_at); on a local filesystem that folder appears whole, by rename, so
  every staging folder names its writer. It has no version number yet: only the publish claims one, so a
  crashed registration never burns a number and versions stay consecutive.
* ``READY``: written into the staging manifest just before the atomic rename to ``versions/N`` (the object
  store: the manifest is written last into ``versions/N``). Only READY versions are listed, resolved by
  :meth:`Registry.get`, loadable, aliasable and so deployable.
* ``FAILED``: ``register`` raised (a bad file, an IO error): it rewrites the staging manifest as FAILED with
  the error and deletes the staged files, keeping that small manifest for inspection. A PENDING registration
  whose writer is gone (same host, pid no longer alive) or that saw no write for ``STALE_STAGING_S`` is
  reported as FAILED ("writer died"). That is a report only: staging folders are deleted by age alone
  (``STALE_STAGING_S`` after their last write), so a misjudged live writer is never harmed.

:meth:`Registry.registrations` (``atoll models list NAME --all``) lists the PENDING and FAILED ones.

The package, each module importing only those above it: :mod:`~atoll.registry.refs` (names and
references), :mod:`~atoll.registry.manifest` (file names, states, sealing and checking manifests),
:mod:`~atoll.registry.writers` (who writes a registration, and whether they live),
:mod:`~atoll.registry.folders` (the layout under the root and its IO on pyarrow.fs),
:mod:`~atoll.registry.versions` (what it hands out, and the checks on a version's files),
:mod:`~atoll.registry.publish` (staging and publishing a registration) and :mod:`~atoll.registry.store`
(the :class:`Registry`). Import this package and use ``registry.X``; the names below are its surface.
"""

from atoll.registry.manifest import FAILED, READY, TamperedManifestError
from atoll.registry.refs import parse_ref, versioned_ref
from atoll.registry.store import Registry, open_registry
from atoll.registry.versions import ModelVersion

__all__ = ["FAILED", "READY", "ModelVersion", "Registry", "TamperedManifestError", "open_registry", "parse_ref",
           "versioned_ref"]
