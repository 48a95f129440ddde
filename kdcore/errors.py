"""Every exception kdcore raises, in one place.

Callers (the worker, the API's submit-time checks) catch these by type and turn them into a job's
error code or a 422; the messages are written for the user and shown unchanged. Nothing here imports
torch, so the API can catch them without loading a model runtime.
"""
from __future__ import annotations

import difflib
from typing import Any


class JobError(Exception):
    """A failure the user can act on; `code` is stable (the job record's `error.code`), `message` says
    what to change."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Cancelled(Exception):
    """should_stop() answered True; the loop (or the teacher-output cache) stopped between two steps."""


class Diverged(Exception):
    """The student diverged without a non-finite loss; the message says what happened and what to change."""


class OutOfMemory(Exception):
    """Out of memory at the requested batch size and again at half of it."""


class CheckpointError(ValueError):
    """A model file we cannot accept or use; the message is meant for the user as it stands."""


class DatasetError(ValueError):
    """Missing, unreadable or malformed data.

    A ValueError so that callers validating a job spec can treat it like any other bad value; the
    message always names the file or folder involved and what was expected there, because it is
    shown to the user unchanged (API problem detail, failed-job error).
    """


class FeatureError(ValueError):
    """A layer path that the model does not have, or a model whose features cannot be taken."""


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message names the known choices."""

    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        close = difflib.get_close_matches(name, choices, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(choices[:60]) + (f", … ({len(choices)} in all)" if len(choices) > 60 else "")
        self.message = f"unknown {kind} {name!r}.{hint} Known {kind}s: {shown}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.message


class InvalidModelKwargsError(ValueError):
    """Bad architecture kwargs. `errors` holds [{loc, msg}] relative to the kwargs object, so the API
    can prefix the location (e.g. student.kwargs) and answer 422 with one entry per problem."""

    def __init__(self, name: str, errors: list[dict[str, Any]]):
        self.name = name
        self.errors = errors
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(kwargs)'}: {e['msg']}" for e in errors]
        super().__init__(f"invalid kwargs for architecture {name!r}: " + "; ".join(parts))
