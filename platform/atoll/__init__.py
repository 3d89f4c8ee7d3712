"""Atoll: the whole ML lifecycle — data, training, sweeps, registry, serving — on one Ray cluster.

Import modules, not names::

    from atoll import cluster, jobs
    info = cluster.up(cluster.load_spec("cluster.yaml"))
    job_id = jobs.submit(["python", "-c", "print('hello')"])

Importing ``atoll`` has no side effects: it reads no environment and starts nothing.
"""

__version__ = "0.1.0"
