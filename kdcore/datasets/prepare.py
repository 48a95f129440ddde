"""Decoding an image-folder upload into the uint8 arrays of a prepared store, in parallel processes.

The arrays (``train_x.npy``, ``test_x.npy``, uint8 N,C,H,W) are created by the caller with
``np.lib.format.open_memmap``; the members of both splits, train then test, form one array order, cut
into contiguous ranges. Each range is decoded by one process started with ``subprocess.Popen([sys.executable,
"-m", "kdcore.datasets.prepare_worker", <json>])``, which opens the arrays ``r+`` and writes its rows in
place. Plain processes, not a multiprocessing pool: Celery's prefork children are daemonic, and a daemonic
process may not start multiprocessing children, but it may start subprocesses.

A worker writes one line per event on its stdout: ``progress <n>`` (images done in its range so far),
``error <json message>`` (a member it cannot use: the parent raises DatasetError with that message), and
exits 0 when its range is done. A worker whose parent died (SIGKILL mid-preparation) stops at its next image.
With ``workers=0`` the same code runs in the calling process (small datasets: no interpreter start-up).
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .imagefolder import decode_member, members_in_order

ProgressFn = Callable[[int, int], None]
SPLITS = ("train", "test")
REPORT_EVERY_S = 0.2  # a worker's progress lines, at most this often (and at the end)
MIN_PER_WORKER = 64  # by default, no process is started for fewer images than this
MAX_WORKERS = 8


def default_workers(total: int) -> int:
    """min(cpu count, 8), and no more than one process per MIN_PER_WORKER images; 0 (decode in this
    process) when that leaves one."""
    n = min(os.cpu_count() or 1, MAX_WORKERS, total // MIN_PER_WORKER)
    return n if n > 1 else 0


def ranges(total: int, workers: int) -> list[tuple[int, int]]:
    """[start, end) of each worker's contiguous part of the array order, sizes differing by at most one."""
    workers = max(1, min(workers, total))
    bounds = [total * i // workers for i in range(workers + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def decode_range(job: dict, report: Callable[[int], None], alive: Callable[[], bool] = lambda: True) -> None:
    """Decodes members [start, end) of the array order (train then test) into the arrays under job["dir"].

    job: {"source", "dir", "mode" ("L"/"RGB"), "size" [W, H], "policy", "start", "end"}. ``report(n)`` gets
    the count done so far; ``alive()`` False stops the work (the parent is gone)."""
    size = (int(job["size"][0]), int(job["size"][1]))
    with members_in_order(Path(job["source"])) as (members, opener):
        order = [(split, row, member) for split in SPLITS for row, (member, _) in enumerate(members[split])]
        arrays: dict[str, np.ndarray] = {}
        last, done = time.monotonic(), 0
        for split, row, member in order[job["start"]:job["end"]]:
            if not alive():
                return
            if split not in arrays:
                arrays[split] = np.load(Path(job["dir"]) / f"{split}_x.npy", mmap_mode="r+")
            arrays[split][row] = decode_member(opener, member, job["mode"], size, job["policy"])
            done += 1
            if time.monotonic() - last >= REPORT_EVERY_S:
                report(done)
                last = time.monotonic()
        for a in arrays.values():
            a.flush()
    report(done)


def _command(job: dict) -> list[str]:
    return [sys.executable, "-m", "kdcore.datasets.prepare_worker", json.dumps(job)]


def _env() -> dict[str, str]:
    """The caller's environment, with kdcore importable and one thread per decoding process."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([here, *[p for p in [env.get("PYTHONPATH")] if p]])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def decode_all(job: dict, total: int, workers: int, on_progress: ProgressFn | None = None,
               touch: Path | None = None) -> None:
    """Decodes the whole array order (``total`` members) into job["dir"], with ``workers`` processes (0: in
    this one). Calls on_progress(done, total) as workers report; touches ``touch`` (the temporary folder,
    so that nobody takes it for a stale one) while it waits. Raises DatasetError naming a bad member."""
    progress = on_progress or (lambda done, total: None)
    progress(0, total)
    if total == 0:
        return
    if workers <= 0:
        decode_range({**job, "start": 0, "end": total}, lambda n: progress(n, total))
        return
    procs: list[subprocess.Popen] = []
    sel = selectors.DefaultSelector()
    counts: dict[int, int] = {}
    errors: dict[int, str] = {}
    stderr: dict[int, bytes] = {}
    try:
        for i, (start, end) in enumerate(ranges(total, workers)):
            p = subprocess.Popen(_command({**job, "start": start, "end": end, "parent": os.getpid()}),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 env=_env(), close_fds=True)
            procs.append(p)
            counts[i], stderr[i] = 0, b""
            sel.register(p.stdout, selectors.EVENT_READ, (i, "out"))
            sel.register(p.stderr, selectors.EVENT_READ, (i, "err"))
        buffers: dict[int, bytes] = dict.fromkeys(counts, b"")
        last_touch = time.monotonic()
        while sel.get_map():
            for key, _ in sel.select(timeout=1.0):
                i, kind = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if kind == "err":
                    stderr[i] = (stderr[i] + chunk)[-4000:]
                    continue
                buffers[i] += chunk
                *lines, buffers[i] = buffers[i].split(b"\n")
                for line in lines:
                    word, _, rest = line.decode().partition(" ")
                    if word == "progress":
                        counts[i] = int(rest)
                    elif word == "error":
                        errors[i] = json.loads(rest)
                progress(sum(counts.values()), total)
            if errors:
                break
            if touch is not None and time.monotonic() - last_touch > 60:
                os.utime(touch)
                last_touch = time.monotonic()
        if errors:
            raise DatasetError(errors[min(errors)])
        for i, p in enumerate(procs):
            if p.wait() != 0:
                tail = stderr[i].decode(errors="replace").strip()[-1000:]
                raise RuntimeError(f"a decoding process (members {ranges(total, workers)[i]}) exited with "
                                   f"code {p.returncode}: {tail or 'no message'}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        sel.close()
