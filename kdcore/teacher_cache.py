"""Teacher outputs computed once per (teacher, data, transform) and reused across epochs and jobs.

Without random augmentation a teacher sees the same input for a sample in every epoch, so its logits
(and the features a method compares) are a function of the sample alone. The loop then runs the teacher
once over the whole split, in large batches under `torch.inference_mode`, and each step gathers its
batch's rows from the result (`TeacherOutput.index`) instead of running the teacher again.

Entries are content-addressed: the key hashes the teachers' checksums (the uploaded file's sha256, or a
digest of the weights), the exact input tensor (so the dataset, its normalization and the transform are
all in it), the layers whose features are kept, the logits' format (kdcore.logit_pack), the precision and
the device type. Several jobs on the
same teacher and data (a sweep over T, alpha or students) therefore share one entry. An entry is one
safetensors file (no pickle on load), written to a temporary name and renamed, so a crash or two workers
building the same entry never leave a half-written file under the real name. Deleting the cache
directory at any time is safe: entries are rebuilt on demand.

The byte budget (`max_bytes`, handed in by the worker from its settings) holds the train split's outputs
as the job keeps them in memory and on disk: the features a method compares first (they are kept exact),
then the logits in the first format that fits what is left: fp32, bf16, or top-k logits plus the rest's
mass for many classes (kdcore.logit_pack). When none fits, the teacher runs at every step and the report
says which limit it hit; the report's `teacher_cache` names the format taken (`built (bf16 logits)`).

Also here: `Teacher`, a frozen teacher with the identity its cache entries are keyed by, and the two
questions the training loop asks (`train_outputs`: the train split's outputs for a phase, or why
the teacher runs per step; `teacher_test_logits`: the teachers' joint logits on the test split).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kdcore.datasets.base import Split
from kdcore.digests import tensor_digest
from kdcore.errors import Cancelled
from kdcore.hardware import autocast, infer_batch_size
from kdcore.logit_pack import FP32, LogitPack, LogitsFormat, choose_format, parse_format
from kdcore.methods import Distiller, TeacherOutput

FORMAT = "kdcore-teacher-cache/2"
DEFAULT_MAX_BYTES = 2 * 1024**3  # features of a whole split above this stay per step (teacher runs each step)
_LOGITS = "logits"
_FEATURE = "feature:"

# The statuses a job's report names (report["teacher_cache"]): BUILT and HIT followed by the logits' format in
# parentheses, e.g. "built (fp32 logits)", "hit (top-20 of 1000 logits + rest mass)".
BUILT, HIT, NOT_STORED = "built", "hit", "not stored: no cache dir"
OFF_AUGMENT, OFF_FEATURES, OFF_DISABLED = "off (augmentation)", "off (features too large)", "off (disabled)"
OFF_LOGITS = "off (logits too large)"


def module_digest(module: nn.Module) -> str:
    """A teacher's identity when its file checksum is unknown: its class and every parameter and buffer."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        if isinstance(t, torch.Tensor):
            h.update(name.encode())
            h.update(tensor_digest(t).encode())
    return h.hexdigest()


def module_signature(module: nn.Module) -> str:
    """Class and parameter names/shapes: cheap, and tells apart two architectures loaded from one file."""
    shapes = [(n, tuple(t.shape)) for n, t in module.state_dict().items() if isinstance(t, torch.Tensor)]
    return hashlib.sha256(f"{type(module).__qualname__}{shapes}".encode()).hexdigest()


def cache_key(teacher_ids: list[str], data_digest: str, layers: list[str], precision: str, device_type: str,
              transform: str = "none", logits: str = "fp32") -> str:
    parts = {"format": FORMAT, "teachers": teacher_ids, "data": data_digest, "transform": transform,
             "layers": sorted(layers), "precision": precision, "device": device_type, "logits": logits}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class CacheResult:
    """What a job took: the outputs (None when the teacher runs per step) and why, with the seconds spent."""

    output: TeacherOutput | None
    status: str
    seconds: float = 0.0
    key: str | None = None


class PackedOutput(TeacherOutput):
    """Teacher outputs whose logits are held compactly (bf16, or top-k + rest mass): `index` reads a batch
    back as float32 logits [K, B, C]. `logits` is the packed tensor as held; read rows through `index`."""

    def __init__(self, pack: LogitPack, features: dict[str, torch.Tensor]):
        super().__init__(next(iter(pack.tensors.values())), features)
        self.pack = pack

    def index(self, idx: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(self.pack.rows(idx), {k: v[idx] for k, v in self.features.items()})


def output_shape(distiller: Distiller, x: Split, device: torch.device, precision: str) -> tuple[int, int, int, int]:
    """(teachers K, classes C, feature bytes per sample, logits' dimensions) as the cache would hold them;
    from one teacher forward on two samples."""
    with torch.inference_mode(), autocast(device, precision):
        out = distiller.teacher_forward(x.head(2))
    features = sum(v[0].numel() * v.element_size() for v in out.features.values())
    return int(out.logits.shape[0]), int(out.logits[0, 0].numel()), int(features), int(out.logits.ndim)


def _wrap(pack: LogitPack, features: dict[str, torch.Tensor]) -> TeacherOutput:
    return TeacherOutput(pack.tensors["logits"], features) if pack.fmt == FP32 else PackedOutput(pack, features)


def compute_outputs(distiller: Distiller, x: Split, device: torch.device, precision: str,
                    batch_size: int | None = None, with_features: bool = True,
                    should_stop: Callable[[], bool] = lambda: False, fmt: LogitsFormat = FP32) -> TeacherOutput:
    """The teachers' outputs for all of the split x, in large batches, written into preallocated tensors
    (the logits in `fmt`, batch by batch: the full fp32 logits of the split are never held)."""
    n = len(x)
    bs = batch_size or infer_batch_size(int(x.head(1)[0].numel()) if n else 1, device)
    pack: LogitPack | None = None
    feats: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), autocast(device, precision):
        for i, xb in zip(range(0, n, bs), x.chunks(bs), strict=True):
            if should_stop():
                raise Cancelled()
            if device.type == "cuda" and xb.ndim == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            if with_features:
                out = distiller.teacher_forward(xb)
            else:
                out = TeacherOutput(distiller.teacher_forward_logits(xb))
            if pack is None:
                if out.logits.ndim != 3 and fmt != FP32:
                    raise ValueError(f"logits of shape {tuple(out.logits.shape)} can only be cached as fp32")
                # normal tensors (not inference tensors), so autograd may save them later as loss targets
                with torch.inference_mode(False):
                    pack = LogitPack.empty(fmt, out.logits.shape[0], n, out.logits.shape[-1], out.logits.device)
                    feats = {k: torch.empty((n, *v.shape[1:]), dtype=v.dtype, device=v.device)
                             for k, v in out.features.items()}
            pack.put(i, out.logits)
            for k, v in out.features.items():
                feats[k][i:i + xb.shape[0]] = v
    if pack is None:
        raise ValueError("no samples to run the teacher on")
    return _wrap(pack, feats)


class TeacherCache:
    """Entries on disk under `root` (or nowhere when root is None: then an entry lives for one job)."""

    def __init__(self, root: Path | None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root) if root is not None else None
        self.max_bytes = max_bytes

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / "teacher" / key[:2] / f"{key}.safetensors"

    def load(self, key: str, device: torch.device, n: int, layers: list[str],
             fmt: LogitsFormat = FP32) -> TeacherOutput | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            tensors = load_file(str(path), device=str(device))
            with safe_open(str(path), "pt") as f:  # the classes count (top-k holds fewer columns than that)
                meta = f.metadata() or {}
        except Exception:  # unreadable (a foreign or damaged file): rebuild it
            return None
        feats = {k[len(_FEATURE):]: tensors.pop(k) for k in list(tensors) if k.startswith(_FEATURE)}
        classes = int(meta.get("classes") or 0)
        pack = LogitPack.from_tensors(fmt, tensors, classes) if parse_format(meta.get("logits", "")) == fmt else None
        if pack is None or classes < 1 or len(pack) != n or sorted(feats) != sorted(layers):
            return None
        return _wrap(pack, feats)

    def store(self, key: str, out: TeacherOutput, meta: dict[str, str]) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        pack = out.pack.tensors if isinstance(out, PackedOutput) else {_LOGITS: out.logits}
        tensors = {k: v.detach().cpu().contiguous() for k, v in pack.items()}
        tensors.update({_FEATURE + k: v.detach().cpu().contiguous() for k, v in out.features.items()})
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"format": FORMAT, **meta})
            os.replace(tmp, path)  # atomic: readers see the old entry, no entry, or the whole new one
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # a full disk must not fail the job: the outputs are in memory

    def outputs(self, distiller: Distiller, x: Split, teacher_ids: list[str], device: torch.device,
                precision: str, *, with_features: bool = True, transform: str = "none",
                data_digest: str | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> CacheResult:
        """The teachers' outputs over all of the split x: loaded when an entry exists, else computed (and stored)."""
        t0 = time.perf_counter()
        layers = distiller.teacher_layers() if with_features else []
        fmt: LogitsFormat = FP32  # the test split (scoring the teacher) keeps exact logits
        classes = 0
        if with_features:  # the train split, held for the whole phase: within the byte budget, or not at all
            teachers, classes, feature_bytes, ndim = output_shape(distiller, x, device, precision)
            rows, room = teachers * len(x), self.max_bytes - feature_bytes * len(x)
            chosen = choose_format(rows, classes, room, topk_allowed=ndim == 3) if room >= 0 else None
            if chosen is None:  # the features are to blame when the logits alone would have fitted
                alone = feature_bytes and choose_format(rows, classes, self.max_bytes, topk_allowed=ndim == 3)
                return CacheResult(None, OFF_FEATURES if alone else OFF_LOGITS, time.perf_counter() - t0)
            fmt = chosen
        digest = data_digest or x.digest()
        key = cache_key(teacher_ids, digest, layers, precision, device.type, transform, fmt.name)
        out = self.load(key, device, len(x), layers, fmt)
        if out is not None:
            return CacheResult(out, _status(HIT, fmt, classes), time.perf_counter() - t0, key)
        out = compute_outputs(distiller, x, device, precision, with_features=with_features, should_stop=should_stop,
                              fmt=fmt)
        classes = classes or int(out.logits.shape[-1])
        self.store(key, out, {"teachers": json.dumps(teacher_ids), "data": digest, "layers": json.dumps(layers),
                              "precision": precision, "device": device.type, "transform": transform,
                              "logits": fmt.name, "classes": str(classes)})
        status = _status(BUILT, fmt, classes, "" if self.root is not None else NOT_STORED)
        return CacheResult(out, status, time.perf_counter() - t0, key)


def _status(word: str, fmt: LogitsFormat, classes: int, note: str = "") -> str:
    return f"{word} ({fmt.describe(classes)}{'; ' + note if note else ''})"


@dataclass
class Teacher:
    """A frozen teacher as the loop takes it: the module, what the report says about it, and its identity."""

    module: nn.Module
    params: int | None = None
    size_bytes: int | None = None
    label: str = "teacher"
    # sha256 of the file the weights came from (upload or earlier job's student): names the teacher in the
    # teacher-output cache key; without it the weights themselves are hashed
    checksum: str | None = None
    # what the teacher path does to the teacher's input and outputs (teacher.input, teacher.outputs:
    # kdcore.teacher_io.TeacherIO.identity); "" for nothing. Part of the identity: other input, other outputs
    io: str = ""

    def cache_id(self) -> str | None:
        """Identity for the teacher-output cache: checksum (or weight digest) plus architecture signature
        (plus `io` when set); None for a module with no checksum and no weights to hash (its outputs are
        cached for one job only)."""
        sig = module_signature(self.module) + (f":io={self.io}" if self.io else "")
        if self.checksum:
            return f"{self.checksum}:{sig}"
        if not any(isinstance(t, torch.Tensor) for t in self.module.state_dict().values()):
            return None
        return f"weights-{module_digest(self.module)}:{sig}"


def _cache_for(cache: TeacherCache | None, teachers: list[Teacher]) -> tuple[TeacherCache, list[str]]:
    """The cache to use and the teachers' ids; an unnamed weightless module keeps its outputs for one job."""
    ids = [t.cache_id() for t in teachers]
    if cache is None or any(i is None for i in ids):
        cache = TeacherCache(None, cache.max_bytes if cache is not None else DEFAULT_MAX_BYTES)
    return cache, [i or "" for i in ids]


def train_outputs(distiller: Distiller, teachers: list[Teacher], x_train: Split, augment: str,
                         device: torch.device, precision: str, cache: TeacherCache | None,
                         should_stop: Callable[[], bool] = lambda: False) -> CacheResult | None:
    """The teachers' outputs over the whole train split when their input is deterministic (no augmentation);
    None for a method without teachers. Its seconds count toward the first epoch trained (docs/spec.md)."""
    if not distiller.teachers:
        return None
    if cache is None:
        return CacheResult(None, OFF_DISABLED)
    if augment != "none":
        return CacheResult(None, OFF_AUGMENT)
    cache, ids = _cache_for(cache, teachers)
    return cache.outputs(distiller, x_train, ids, device, precision, should_stop=should_stop)


def teacher_test_logits(distiller: Distiller, teachers: list[Teacher], x_test: Split, device: torch.device,
                precision: str, cache: TeacherCache | None) -> torch.Tensor:
    """The teachers' joint logits on the test split (cached like the train split: a sweep evaluates its
    teacher once). Even with the cache off they are computed once per job, in large batches."""
    cache, ids = _cache_for(cache, teachers)
    z = cache.outputs(distiller, x_test, ids, device, precision, with_features=False).output
    assert z is not None
    return distiller.joint_logits(z.logits)
