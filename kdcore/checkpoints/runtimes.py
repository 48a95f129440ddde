"""Teachers that are not plain nn.Modules, wrapped to run like one: an onnxruntime session (`OnnxModule`)
and a torch.export program (`_ExportedModule`), both eval-only. Each states the batch sizes it accepts as
`batch_limits` (read by `kdcore.checkpoints.constraints`) and runs any batch in chunks that fit
(`kdcore.batching.run_in_chunks`: a static batch pads its last chunk, a bounded one splits at its max).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from kdcore.batching import Limits, run_in_chunks
from kdcore.checkpoints.constraints import InputConstraints, onnx_input
from kdcore.checkpoints.reading import _parse_onnx
from kdcore.errors import CheckpointError, FeatureError

if TYPE_CHECKING:  # kept out of the import so that the API process pays for it only when used
    import onnxruntime

_ORT_INPUT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}



class OnnxModule(nn.Module):
    """An onnxruntime session as an eval-only teacher: forward(x) -> float32 logits on x's device.

    It has no parameters and no gradient (the graph is opaque), so it suits logit-only methods. A
    model exported with a fixed batch size is run in chunks of that size, the last one zero-padded.
    """

    def __init__(self, session: onnxruntime.InferenceSession):
        super().__init__()
        self.session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"an ONNX teacher must take exactly one input (the image batch); this one "
                                  f"takes {len(inputs)}: {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = session.get_outputs()[0].name
        dtype = _ORT_INPUT_TYPES.get(inputs[0].type)
        if dtype is None:
            raise CheckpointError(f"the ONNX model's input is {inputs[0].type}; a floating-point image batch "
                                  "(float32, float16 or double) is expected")
        self.input_dtype = dtype
        self.constraints = onnx_input(list(inputs[0].shape or []), np.dtype(dtype).name)
        self.batch_limits: Limits = self.constraints.limits

    @classmethod
    def from_file(cls, path: Path, *, device: torch.device | str = "cpu") -> OnnxModule:
        """Build from a file, on CUDA when `device` is a CUDA device and onnxruntime can use one."""
        import onnxruntime as ort

        path, device = Path(path), torch.device(device)
        data = path.read_bytes()
        _parse_onnx(data, path.name)
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers etc. mean nothing to users
        # From bytes: the session has no model directory to resolve any relative path against.
        return cls(ort.InferenceSession(data, sess_options=options, providers=providers))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy().astype(self.input_dtype,
                                                                                        copy=False))
        out = self.session.run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def feature_root(self) -> nn.Module:
        raise FeatureError("an ONNX teacher gives its logits only; feature methods need a .pt2 or a state dict")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_in_chunks(self._run, x, self.batch_limits).to(x.device)


class _ExportedModule(nn.Module):
    """Holds ExportedProgram.module(): train()/eval() only set the flag, since the exported graph
    module refuses them (the graph was captured in one mode). Batches run in chunks within the program's
    batch limits, cast to its input dtype.

    Feature methods hook layers by module path; the flat graph module has none to hook, so
    `feature_root` rebuilds the module tree with `torch.export.unflatten` and runs through it from then on.
    With limited batches the caller chunks before the hooks see a batch (`Distiller.teacher_forward`).
    """

    def __init__(self, program: nn.Module, constraints: InputConstraints,
                 exported: torch.export.ExportedProgram | None = None):
        super().__init__()
        self.program = program
        self.constraints = constraints
        self.batch_limits: Limits = constraints.limits
        self._dtype = getattr(torch, constraints.dtype or "", None)
        self._exported = exported
        self.tree: nn.Module | None = None

    def feature_root(self) -> nn.Module:
        if self.tree is None:
            if self._exported is None:
                raise FeatureError("this exported teacher keeps no module tree to take features from")
            self.tree = torch.export.unflatten(self._exported)
            for p in self.tree.parameters():
                p.requires_grad_(False)
        return self.tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self._dtype, torch.dtype) and x.is_floating_point() and x.dtype != self._dtype:
            x = x.to(self._dtype)  # a program traced in float16 refuses float32 input
        return run_in_chunks(self.tree if self.tree is not None else self.program, x, self.batch_limits)

    def train(self, mode: bool = True) -> _ExportedModule:
        self.training = mode
        return self
