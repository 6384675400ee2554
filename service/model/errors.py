"""Errors of the model's lifecycle, which the scoring core and the API pass on to clients."""

from __future__ import annotations


class NotReady(Exception):
    """No model is loaded yet (or loading failed)."""


class ReloadFailed(Exception):
    """A new version could not be loaded; the previous one keeps serving."""


class ShuttingDown(Exception):
    """The service is stopping: the client should retry on another replica (503)."""
