"""Fixtures shared by the kdcore tests: the digits data (bundled with scikit-learn, no download), loaded once."""
from __future__ import annotations

import pytest

from kdcore.datasets import TensorData, load_dataset


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> TensorData:
    return load_dataset("digits", tmp_path_factory.mktemp("root"))
