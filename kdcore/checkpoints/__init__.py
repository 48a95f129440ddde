"""Model files in and out: uploaded teacher checkpoints, student weights, export helpers.

One module per job, imported in this order (each imports only those before it):

- `formats`: format names, file extensions, `detect_format` (name and first bytes only);
- `reading`: readers shared by inspection and building (weights-only state dicts, safetensors,
  ONNX without external data) and the CheckpointError wrapping of read failures;
- `pt2_vetting`: what a .pt2 archive must look like before torch.export.load may see it, and the
  security rule every reader here follows: nothing a user uploads may run code on our side;
- `constraints`: what input a program accepts (batch static/bounded/dynamic, shape, dtype);
- `inspection`: `inspect_upload`, facts about an upload without building or running a model (API);
- `runtimes`: ONNX and torch.export teachers wrapped as eval-only modules, run in chunks that fit;
- `building`: `load_teacher`, teachers built from files into registry architectures (worker);
- `students`: `save_student` and `load_student`;
- `exports`: `export_program` and `export_onnx`, writing models in the formats we accept.

Errors come from kdcore.errors: CheckpointError (a file we cannot accept or use, re-exported here)
and FeatureError (a teacher whose features cannot be taken).
"""
from __future__ import annotations

from kdcore.checkpoints.building import load_teacher
from kdcore.checkpoints.exports import export_onnx, export_program
from kdcore.checkpoints.formats import DATASET_FORMATS, EXTENSIONS, FORMATS, detect_format
from kdcore.checkpoints.inspection import inspect_upload
from kdcore.checkpoints.runtimes import OnnxModule
from kdcore.checkpoints.students import STUDENT_FORMAT, load_student, save_student
from kdcore.errors import CheckpointError

__all__ = [
    "DATASET_FORMATS",
    "EXTENSIONS",
    "FORMATS",
    "STUDENT_FORMAT",
    "CheckpointError",
    "OnnxModule",
    "detect_format",
    "export_onnx",
    "export_program",
    "inspect_upload",
    "load_student",
    "load_teacher",
    "save_student",
]
