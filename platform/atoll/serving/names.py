"""Names Atoll's Serve apps share between the client side (deploy, status, the proxy's key check) and the
replica side: one home, so that a replica never imports client code for a constant."""

MODEL_IMPORT_PATH = "atoll.serving.replica:app"
DEPLOYMENT_NAME = "ModelServer"
GALLERY_APP = "_gallery"  # not a valid `--app` name, so it never collides with a model app
GALLERY_IMPORT_PATH = "atoll.serving.playground:gallery_app"
CANARY_SUFFIX = ".canary"  # APP's canary runs as the app APP.canary (a dot: never a valid `--app` name)
VERSION_HEADER = "x-atoll-version"  # on every answer of a model app: the version that gave it


def is_model_app(name: str) -> bool:
    """Whether the Serve app ``name`` is one a user deployed and queries by its route: not the gallery page, not
    a canary (which answers through its live app)."""
    return name != GALLERY_APP and not name.endswith(CANARY_SUFFIX)
