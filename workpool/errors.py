"""One small error hierarchy.

The split that matters is *retryable* (`TransientError`) versus *permanent*: a consumer releases
a batch with backoff on a retryable error (the storage account blinked, the model server is busy)
and dead-letters at once on a permanent one (the message can never be decoded). Command-line
entry points map `UsageError` to exit code 2 and every other `WorkpoolError` to exit code 1.
"""

from __future__ import annotations


class WorkpoolError(Exception):
    """Base of every error workpool raises on purpose."""


class UsageError(WorkpoolError):
    """Bad input from the user: a wrong setting, flag or source. Exit code 2."""


class SettingsError(UsageError):
    """A setting is missing or has the wrong form; the message names the setting."""


class NotFoundError(WorkpoolError):
    """A container, directory, blob, file, queue or run that should exist does not."""


class TransientError(WorkpoolError):
    """Worth retrying after a pause: the service was unreachable, busy or timed out."""


class StorageUnavailableError(TransientError):
    """The queue or store could not be reached (connection refused, timeout, 5xx, locked)."""


class PartialSendError(StorageUnavailableError):
    """Some messages of one `send` arrived and some did not: `unsent` are the indices of the
    bodies that did not, so a retry re-sends only those instead of duplicating the rest."""

    def __init__(self, message: str, unsent: list[int]) -> None:
        super().__init__(message)
        self.unsent = unsent


class LeaseLostError(WorkpoolError):
    """The message's receipt is no longer valid: its lease expired or it was renewed elsewhere.

    Whoever holds the newest receipt owns the message; the holder of a stale one must stop
    touching it (its results, written idempotently, stay harmless).
    """


class MessageError(WorkpoolError):
    """A queue message that can never be processed (not JSON, wrong schema, bad names).

    Such a message goes to the poison queue at once, with this error's text as the reason.
    """


class MessageTooLargeError(WorkpoolError):
    """An encoded message would exceed the queue's 64 KiB limit."""


class ImageError(WorkpoolError):
    """One image could not be read or decoded; it becomes an error row, the batch goes on."""
