"""One exception hierarchy for everything Atoll reports to a user.

Every error carries a message that says what is wrong and how to fix it. The CLI turns an
``AtollError`` into one line and a non-zero exit; anything else is an internal error.
Exceptions keep their constructor arguments in ``args`` so they survive pickling across Ray.
"""

from __future__ import annotations


class AtollError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` says how."""

    exit_code = 1


class ConfigError(AtollError):
    """A config file (cluster.yaml, a training or sweep spec) is missing or invalid."""

    exit_code = 2


class ClusterNotUpError(AtollError):
    """No cluster answers at the expected address."""


class ClusterError(AtollError):
    """Starting, stopping or talking to the cluster failed."""


class JobNotFoundError(AtollError):
    """A job id that the cluster does not know."""


class JobFailedError(AtollError):
    """A job ended FAILED or STOPPED."""


class JobUnschedulableError(AtollError):
    """A job waits for resources that no node of the cluster has or can get."""


class DataError(AtollError):
    """A dataset is missing, empty, or does not match the spec."""


class RegistryError(AtollError):
    """A model, version or alias that does not exist, or a registry write that was refused."""


class ServingError(AtollError):
    """A Serve application could not be deployed, found or queried."""


class RequestError(AtollError):
    """A request an endpoint refuses: an HTTP status (4xx) and a message that says what to fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
