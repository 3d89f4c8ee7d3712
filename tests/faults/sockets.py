"""What the local cluster listens on, read with psutil: shared by the serving and training fault tests."""

from __future__ import annotations

import ipaddress

import psutil


def cluster_pids() -> set[int]:
    """Every process of the cluster: what `atoll up` started and all their descendants (workers, replicas)."""
    from atoll import cluster

    pids = set()
    for pid in cluster.ray_processes_of(cluster.current()):
        try:
            pids |= {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    return pids


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def listeners() -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of the cluster's processes."""
    pids = cluster_pids()
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                found.append((psutil.Process(conn.pid).name(), conn.laddr.ip, conn.laddr.port))
            except psutil.NoSuchProcess:
                continue
    return found
