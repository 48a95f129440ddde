"""The one error type every dataset loader raises for data it cannot use."""
from __future__ import annotations

from kdcore.errors import DatasetError

__all__ = ["DatasetError"]
