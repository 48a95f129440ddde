"""The dataset registry and the calls the rest of the service makes on it.

Every loader has the signature ``fn(root, artifact, download) -> TensorData``; static facts about a
built-in dataset (class count, shape, normalization) are registered beside it as a DatasetInfo so that
the API and the model builders can answer without touching any data.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kdcore.registry import Registry

from .base import Data, DatasetInfo, TensorData
from .errors import DatasetError

Loader = Callable[[Path, Path | None, bool], TensorData]
ProgressFn = Callable[[int, int], None]


class Preparer(Protocol):
    """A prepared-dataset store (kdcore.datasets.store.PreparedStore): decodes an upload once into
    memory-mapped shards and hands back data read batch by batch."""

    def prepare(self, source: Path, *, image_size: tuple[int, int] | None = None, channels: int | None = None,
                on_progress: ProgressFn | None = None, source_sha256: str | None = None) -> Data: ...
# For datasets whose facts depend on the uploaded artifact (npz, imagefolder): artifact -> DatasetInfo.
Inspector = Callable[[Path], DatasetInfo]

DATASETS: Registry[Loader] = Registry("dataset")

AUGMENT_CHOICES = ("none", "standard")


def register_dataset(
    name: str,
    *,
    description: str,
    needs_artifact: bool = False,
    info: DatasetInfo | None = None,
    inspect: Inspector | None = None,
    artifact_format: str | None = None,
    preparable: bool = False,
    resizable: bool = False,
) -> Callable[[Loader], Loader]:
    """Register a loader under ``name``.

    Built-ins pass their static ``info``; artifact-backed datasets pass ``inspect`` instead, which
    reads the artifact's facts (``dataset_info`` calls it), and ``artifact_format``, a sentence for
    the catalog saying what the upload must contain. ``preparable`` datasets are decoded once into a
    prepared store when the caller gives one to `load_dataset` (large uploads are then never held whole);
    ``resizable`` ones are prepared at a chosen ``image_size`` and ``channels`` (image folders; an npz is
    prepared as given).
    """
    if info is None and (inspect is None or not needs_artifact):
        # without static facts, dataset_info can only read them from an artifact
        raise ValueError(f"dataset {name!r} needs a static info, or an inspect function and needs_artifact")
    return DATASETS.register(
        name,
        description=description,
        needs_artifact=needs_artifact,
        info=info,
        inspect=inspect,
        artifact_format=artifact_format,
        preparable=preparable,
        resizable=resizable,
    )


def _artifact_path(name: str, artifact: Path | None, needs: bool) -> Path | None:
    if artifact is None:
        if needs:
            raise DatasetError(f"dataset {name!r} needs an uploaded artifact (dataset.artifact), none given")
        return None
    path = Path(artifact)
    if not path.exists():
        raise DatasetError(f"dataset artifact not found: {path}")
    return path


def dataset_info(name: str, artifact: Path | None = None) -> DatasetInfo:
    """The format of dataset ``name`` without loading it (artifact datasets read their file's facts).

    Raises UnknownNameError for an unregistered name and DatasetError for an unusable artifact.
    """
    entry = DATASETS.get(name)
    meta = entry.meta
    path = _artifact_path(name, artifact, meta["needs_artifact"])
    if meta["info"] is not None:
        return meta["info"]
    assert path is not None  # an inspect-only dataset is always registered with needs_artifact=True
    return meta["inspect"](path)


def load_dataset(name: str, root: Path, artifact: Path | None = None, download: bool = False, *,
                 store: Preparer | None = None, image_size: tuple[int, int] | None = None,
                 channels: int | None = None, on_progress: ProgressFn | None = None,
                 source_sha256: str | None = None) -> Data:
    """The dataset as the loop reads it; ``root`` is the operator's dataset root.

    With a prepared-dataset ``store``, a preparable dataset (an uploaded image folder) is decoded once into
    it (``on_progress(done, total)`` while decoding; ``source_sha256`` names the upload, saving a hash of
    the file) and read from disk batch by batch, at ``image_size`` (H, W) and ``channels`` when given;
    every other dataset is loaded whole as tensors."""
    entry = DATASETS.get(name)
    path = _artifact_path(name, artifact, entry.meta["needs_artifact"])
    if store is not None and entry.meta.get("preparable") and path is not None:
        return store.prepare(path, image_size=image_size, channels=channels, on_progress=on_progress,
                             source_sha256=source_sha256)
    if image_size is not None or channels is not None:
        raise DatasetError(f"dataset {name!r}: image_size and channels are applied when an uploaded image folder "
                           "is prepared (a prepared-dataset store is needed)")
    return entry.fn(Path(root), path, download)


def _params_schema(meta: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of the job spec's ``dataset`` fields other than ``name`` for this dataset."""
    artifact: dict[str, Any] = {
        "type": "string" if meta["needs_artifact"] else "null",
        "description": (
            "id of an uploaded dataset file (POST /v1/artifacts)"
            + (f": {meta['artifact_format']}" if meta["artifact_format"] else "")
            if meta["needs_artifact"]
            else "not used: the data is read from the service's dataset root"
        ),
    }
    if not meta["needs_artifact"]:
        artifact["default"] = None
    prepared: dict[str, Any] = {}
    if meta.get("resizable"):
        prepared = {
            "image_size": {"type": "array", "items": {"type": "integer", "minimum": 8, "maximum": 1024},
                           "minItems": 2, "maxItems": 2, "default": None,
                           "description": "[H, W] the images are prepared at: the shorter side scaled to cover it, "
                           "then a center crop; default: the most common train size (others resized to it)"},
            "channels": {"type": "integer", "enum": [1, 3], "default": None,
                         "description": "1 (grayscale) or 3 (RGB); default: 1 when every image is grayscale"},
        }
    return {
        "type": "object",
        "properties": {
            "artifact": artifact,
            **prepared,
            "augment": {
                "type": "string",
                "enum": list(AUGMENT_CHOICES),
                "default": "none",
                "description": "standard: random crop (4 px padding at 32 px) + horizontal flip for colour "
                "images; random translation (2 px at 28 px) without flip for grayscale images",
            },
        },
        "required": ["artifact"] if meta["needs_artifact"] else [],
        "additionalProperties": False,
    }


def dataset_catalog() -> list[dict[str, Any]]:
    """One JSON-ready entry per registered dataset, sorted by name, for GET /v1/catalog."""
    out: list[dict[str, Any]] = []
    for entry in DATASETS:
        info: DatasetInfo | None = entry.meta["info"]
        out.append(
            {
                "name": entry.name,
                "description": entry.meta["description"],
                "needs_artifact": entry.meta["needs_artifact"],
                # artifact datasets have no fixed format: it is read from each upload
                "format": info.describe() if info is not None else None,
                "params": _params_schema(entry.meta),
            }
        )
    return out
