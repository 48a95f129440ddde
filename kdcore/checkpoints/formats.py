"""Which model or dataset format an upload is: format names, file extensions, and `detect_format`.

Decided from the file name and its first bytes alone, so the API can refuse a wrong upload before reading
the rest; `kdcore.checkpoints.inspection` then reads what the file holds.

Formats by name: "safetensors", "state_dict" (.pt/.pth), "export" (.pt2), "onnx", "npz", "imagefolder" (.zip).
"""
from __future__ import annotations

from pathlib import Path

from kdcore.errors import CheckpointError

FORMATS = ("safetensors", "state_dict", "export", "onnx", "npz", "imagefolder")
# Upload formats that are datasets, not models (each is also the name of the dataset kind that reads it).
DATASET_FORMATS = frozenset({"npz", "imagefolder"})
EXTENSIONS: dict[str, str] = {
    ".safetensors": "safetensors",
    ".pt": "state_dict",
    ".pth": "state_dict",
    ".pt2": "export",
    ".onnx": "onnx",
    ".npz": "npz",
    ".zip": "imagefolder",
}
_LABELS = {
    "safetensors": "a safetensors file",
    "state_dict": "a PyTorch state dict",
    "export": "a torch.export program",
    "onnx": "an ONNX model",
    "npz": "a NumPy .npz archive",
    "imagefolder": "a .zip of class folders",
}
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_SAFETENSORS_HEADER = 100_000_000  # the limit the safetensors library itself enforces


def _accepted() -> str:
    return ", ".join(EXTENSIONS)


def detect_format(filename: str, head: bytes) -> str:
    """The format named by `filename`'s extension, checked against the file's first bytes.

    Pass at least the first 16 bytes as `head`. ONNX has no magic number (a protobuf), so its
    content is checked by inspect_upload only.
    """
    suffix = Path(filename).suffix.lower()
    fmt = EXTENSIONS.get(suffix)
    if fmt is None:
        shown = repr(suffix) if suffix else "no extension"
        raise CheckpointError(f"{filename!r} has {shown}; accepted file types: {_accepted()}")
    if not head:
        raise CheckpointError(f"{filename!r} is empty")
    if fmt == "safetensors":
        size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        if len(head) < 9 or not 2 <= size <= _MAX_SAFETENSORS_HEADER or head[8:9] != b"{":
            raise CheckpointError(f"{filename!r} is named .safetensors but does not start with a safetensors "
                                  "header (8-byte length, then JSON)")
    elif fmt in ("state_dict", "export", "npz", "imagefolder") and not head.startswith(_ZIP_MAGIC):
        hint = {
            "state_dict": "save it with torch.save(model.state_dict(), path) (PyTorch 1.6 or later writes "
                          "a zip archive; older raw-pickle files are not accepted)",
            "export": "save it with torch.export.save(torch.export.export(model, (example,)), path)",
            "npz": "save it with numpy.savez or numpy.savez_compressed",
            "imagefolder": "zip the train/ and test/ folders",
        }[fmt]
        raise CheckpointError(f"{filename!r} is named {suffix} but is not a zip archive; {hint}")
    return fmt
