"""`atoll serve drift APP`: an app's logged inputs (:mod:`atoll.request_log`) compared with the training profile
of the version it serves (:mod:`atoll.profiles`, which says how), as figures per feature and a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from atoll import profiles
from atoll.errors import ServingError
from atoll.profiles import DEFAULT_THRESHOLD, PROFILE_FILE

# ------------------------------------------------------------------------------------------------
# An app's drift (reads the cluster's Serve config, the registry and the request log)


def load_profile(reg, version) -> dict[str, Any]:
    """A version's ``profile.json``.

    Raises:
        ServingError: the version has none (a language model, or one registered before profiles or without them).
    """
    if PROFILE_FILE not in version.files:
        raise ServingError(f"{version.ref} has no input profile ({PROFILE_FILE}): it was registered without one (a "
                           f"language model, or a version older than profiles); train it again to get one.")
    return json.loads(reg.read_file(version, PROFILE_FILE))


def report(app: str, *, since_hours: float | None = None, threshold: float = DEFAULT_THRESHOLD, spec=None
           ) -> dict[str, Any]:
    """The drift of ``app``'s logged inputs (of the version it serves now) from that version's training profile.

    Raises:
        ServingError: no such app, no logged requests of its version, or a version without a profile.
        ClusterNotUpError: no cluster answers.
    """
    from atoll import cluster, registry, request_log
    from atoll.serving import endpoints

    spec = spec or cluster.load_spec()
    apps = {r["app"]: r for r in endpoints.status(spec=spec)}
    if app not in apps:
        raise ServingError(f"no Serve app {app!r}; apps: {', '.join(sorted(apps)) or 'none'} (`atoll serve status`).")
    reg = registry.Registry(spec.atoll.storage)
    version = reg.get(apps[app]["model"])
    profile = load_profile(reg, version)
    frame = request_log.read(spec.atoll.storage, app, since=since_hours)
    if len(frame):
        frame = frame[(frame["model"] == version.name) & (frame["version"] == version.version)
                      & (frame["status"] < 400)]
    if not len(frame):
        when = f" in the last {since_hours:g} hours" if since_hours else ""
        raise ServingError(f"no logged requests of {app} ({version.ref}){when}: deploy it with `atoll serve deploy "
                           f"{version.ref} --app {app} --log-requests 0.1` (a share of requests to keep) and send "
                           f"it traffic; the log is written every few seconds.")
    live = profiles.live_values(profile, version.input_schema or {}, frame["inputs"].tolist())
    features = profiles.compare(profile, live, threshold)
    return {"app": app, "model": version.ref, "requests": int(len(frame)),
            "rows": max((f["live"] for f in features), default=0), "threshold": threshold,
            "since_hours": since_hours, "profile_rows": profile.get("rows"),
            "flagged": [f["feature"] for f in features if f["flagged"]], "features": features}


def plot(result: dict[str, Any], path: str | Path) -> str:
    """One small panel per feature: the training and live shares per bin, flagged features in red."""
    from matplotlib.figure import Figure

    features = result["features"]
    cols = min(8, max(len(features), 1))
    rows = max(math.ceil(len(features) / cols), 1)
    fig = Figure(figsize=(2.2 * cols, 1.8 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, f in zip(axes.flat, features, strict=False):
        ax.set_axis_on()
        x = np.arange(len(f["bins"]))
        ax.bar(x - 0.2, f["training_share"], width=0.4, label="training", color="#7f8c8d")
        ax.bar(x + 0.2, f["live_share"], width=0.4, label="live", color="#c0392b" if f["flagged"] else "#2e86de")
        ax.set_title(f"{f['feature']}  PSI {f['psi']:.2f}{'  FLAGGED' if f['flagged'] else ''}", fontsize=7,
                     color="#c0392b" if f["flagged"] else "black")
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{result['app']} ({result['model']}): training vs live inputs, {result['rows']} live rows; "
                 f"flagged: PSI > {result['threshold']:g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)
