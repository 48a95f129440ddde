"""Reader for the IDX format of the original MNIST files (yann.lecun.com/exdb/mnist/).

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension, then the data in C order, big-endian. Files may be gzipped.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

# IDX type code -> numpy dtype (big-endian, as the format stores every multi-byte value)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    # trust the gzip magic rather than the name: a decompressed file may keep its .gz name
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path} is not a valid gzip file ({e}); delete it and fetch it again") from e
    return raw


def read_idx(path: Path, expected_ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a native-endian numpy array.

    Raises DatasetError for a wrong magic number, an unexpected number of dimensions, or a payload
    whose length does not match the header (a truncated download is the usual cause).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path} is not an IDX file: only {len(data)} bytes")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DatasetError(
            f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()} "
            "(expected 00 00, a type code 08/09/0B/0C/0D/0E, and the number of dimensions)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DatasetError(f"{path}: expected an IDX file with {expected_ndim} dimensions, found {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: IDX header announces shape {tuple(shape)} ({expected} data bytes) "
            f"but the file holds {len(data) - header}; the file is truncated or corrupt"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # native byte order and a writable copy, so torch.from_numpy accepts it
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: Path, arr: np.ndarray, compress: bool | None = None) -> None:
    """Write ``arr`` as an IDX file, gzipped when ``compress`` or the name ends in .gz (tests, tools)."""
    path = Path(path)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = arr.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    code = codes[native]
    payload = (
        struct.pack(">HBB", 0, code, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + np.ascontiguousarray(arr).astype(IDX_DTYPES[code], copy=False).tobytes()
    )
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
