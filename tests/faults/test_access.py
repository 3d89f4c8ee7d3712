"""Access to the cluster: the token guards the dashboard and the Jobs API; nothing that arrives over the
network is unpickled. (Listening sockets are checked in test_serve_faults.py, once Serve runs too.)"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import httpx
import pytest
from atoll import auth

pytestmark = pytest.mark.cluster

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "atoll"
# Read endpoints of the dashboard and the Jobs API (Ray's own routes), and one that writes.
ROUTES = ["/api/jobs/", "/api/version", "/api/serve/applications/", "/nodes?view=summary", "/api/cluster_status",
          "/logical/actors", "/api/v0/tasks", "/api/v0/nodes"]


def test_the_dashboard_and_jobs_api_refuse_callers_without_the_token(ray_cluster, reliability):
    base = ray_cluster.dashboard_url
    refused = 0
    with httpx.Client(timeout=15) as http:
        for route in ROUTES:
            assert http.get(base + route).status_code == 401, route
            assert http.get(base + route, headers={"Authorization": "Bearer wrong"}).status_code in (401, 403), route
            refused += 2
            assert http.get(base + route, headers=auth.headers()).status_code == 200, route
        submit = http.post(f"{base}/api/jobs/", json={"entrypoint": "echo owned"})
        assert submit.status_code == 401
        refused += 1
    assert stat.S_IMODE(auth.token_path().stat().st_mode) == 0o600
    reliability("access", f"{len(ROUTES)} dashboard / Jobs API routes and a job submission without the token "
                "or with a wrong one", f"{refused}/{refused} refused (401/403); with the token: 200; token file mode 0600")


def test_nothing_from_the_network_is_unpickled():
    """No unpickling and no unsafe torch.load anywhere in the package (request bodies are JSON)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"\bpickle\.loads?\(", r"cloudpickle\.loads?\(", r"weights_only\s*=\s*False"):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
        # Every torch.load call says weights_only=True (within the call's first lines).
        offenders += [f"{path.name}: torch.load without weights_only=True" for m in re.finditer(r"torch\.load\(", text)
                      if not re.search(r"weights_only\s*=\s*True", text[m.end():m.end() + 300].split("\n\n")[0])]
    assert not offenders, offenders
