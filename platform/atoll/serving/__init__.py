"""Ray Serve: registered models as HTTP endpoints, with a playground page for each and a gallery of all.

Two sides that never mix, because a replica must not import the client (nor the client Serve's replica code):

- the replica side, run inside Serve: ``replica`` (the model application ``atoll.serving.replica:app``:
  request validation, batching, the model card), ``playground`` (the playground page, its examples and
  the gallery app at ``/``, with their static files in ``ui/``) and ``proxy_auth`` (the API-key check
  loaded into every HTTP proxy);
- the client side, run by the CLI and library callers: ``endpoints`` (deploy, status, query, delete
  through the dashboard's Serve REST API) and ``logs`` (a replica's log files, from Ray's state API);
- ``names``: the constants both sides share (deployment name, import paths).

This module imports nothing: the proxy and every replica import it first.
"""
