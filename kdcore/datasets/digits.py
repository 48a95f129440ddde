"""scikit-learn's bundled 8x8 digits: tiny, always present, so it is the default for smoke tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import make_data
from .base import DatasetInfo, TensorData
from .catalog import register_dataset

# Mean and std of the train split below, pixels / 16; checked by tests/kdcore/test_datasets.py.
DIGITS_INFO = DatasetInfo(
    name="digits",
    num_classes=10,
    in_channels=1,
    image_size=(8, 8),
    mean=(0.3054,),
    std=(0.3761,),
    class_names=tuple(str(i) for i in range(10)),
    train_size=1437,
    test_size=360,
    raw_range="0..16 / 16",
)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split: stratified, 20 % test, seed 0 (x as N,1,8,8 in 0..16; y int64)."""
    # imported here so that importing kdcore does not pay for scikit-learn unless digits is used
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return x_train, y_train, x_test, y_test


@register_dataset(
    "digits",
    description="scikit-learn's 8x8 handwritten digits (1797 images, bundled; no download). "
    "Fixed stratified split: 1437 train / 360 test.",
    info=DIGITS_INFO,
)
def load_digits_dataset(root: Path, artifact: Path | None, download: bool) -> TensorData:
    x_train, y_train, x_test, y_test = digits_split()
    return make_data(DIGITS_INFO, x_train, y_train, x_test, y_test, max_value=16.0)
