"""The Serve application of a registered model, importable as ``serve.app:app`` from the project root.

It is Atoll's model application (:mod:`atoll.serving.replica`): Serve configs name it ``atoll.serving.replica:app`` so
that it imports on any node where Atoll is installed, with nothing to ship. From the project root:

    serve run serve.app:app model=digits:1            # Ray's own CLI, in the foreground
    serve deploy serve/config.yaml                     # declarative, on a running cluster
    atoll serve deploy digits@production              # the same thing, version pinned, waits for RUNNING
"""

from atoll.serving.replica import ModelServer, Predictor, app

__all__ = ["ModelServer", "Predictor", "app"]
