"""The toolkit's errors: what a command prints as one line, and what stays a bug.

The library raises these; ``shipseg.cli.main`` prints their message (which names the file or
option and the problem) on one line and exits with status 2. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations


class ShipsegError(Exception):
    """Base of the errors a command turns into one line of its own."""


class UserError(ShipsegError):
    """A problem with what the user asked for (an option, a folder, a project, a model)."""


class DataError(UserError):
    """A problem with the user's data: a missing or unreadable image, CSV or RLE string."""


class RequestError(ShipsegError):
    """A bad request to the service: answered with ``status`` and the message, nothing else.

    Attributes:
        status: The HTTP status (4xx) that says what kind of problem it is.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ServiceBusyError(RequestError):
    """The service is at one of its limits: 503, and the client may retry after a second.

    Attributes:
        retry_after: Seconds the client should wait (the ``Retry-After`` header).
    """

    retry_after = 1

    def __init__(self, limit: str = "the service is busy"):
        super().__init__(503, f"{limit}: try again shortly")
