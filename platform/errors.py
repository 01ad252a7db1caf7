"""Errors of the platform that a user can fix (printed as one line by the CLI, no traceback)."""


class PlatformError(ValueError):
    """A problem with the cluster or the request, found before any training starts."""


class RunFailed(RuntimeError):
    """A run ended without every epoch in the store, or with an error no retry can fix."""
