"""The one error type every dataset loader raises for data it cannot use."""
from __future__ import annotations


class DatasetError(ValueError):
    """Missing, unreadable or malformed data.

    A ValueError so that callers validating a job spec can treat it like any other bad value; the
    message always names the file or folder involved and what was expected there, because it is
    shown to the user unchanged (API problem detail, failed-job error).
    """
