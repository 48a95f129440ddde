"""Image-folder data at scale through the service: upload, prepare once, train from the prepared store.

Makes an imagefolder zip of N seeded synthetic JPEGs of 10 learnable classes (each a colour and a pattern
with random phase, position and colour jitter, plus noise) and a test split of N/10, starts `distillery up`
on a free port with a temporary data dir, and measures through HTTP:

1. the upload (`POST /v1/artifacts`, streamed from disk): wall time and the API's peak anonymous memory;
2. a 1-epoch teacher job (`none`, convnet) that prepares the store (prepare time and images/s from its
   `prepare` progress events and the "prepared dataset ... ready in X s" log), then a 1-epoch `kd` job
   into a smaller convnet that must reuse the store (no prepare phase): wall time, training images/s
   (report.epochs[].seconds), test top-1, and the worker's peak anonymous memory;
3. with the service stopped, the input pipeline alone, no model, one epoch over the train split each:
   (a) PreparedSplit.batches over the prepared store, (b) torchvision ImageFolder + DataLoader(num_workers=2)
   on the same JPEGs extracted to a folder, (c) DataLoader(num_workers=2) over the prepared memmap.

Memory is RssAnon (/proc/<pid>/status: anonymous resident memory; page cache of mapped files does not
count), sampled every 0.2 s by a thread here, summed over a part's process tree (the API: its uvicorn
process; the worker: the Celery main process, its pool children and any decoding subprocesses), peak over
the phase. Goals (PASS/FAIL, reported either way): API peak < 1 GB during the upload, worker peak < 3 GB,
pipeline (a) >= 2x (b).

    .venv/bin/python benchmarks/data_scale.py [--images 5000] [--size 224] [--seed 0]

Writes benchmarks/results/data_scale.json (--out). Everything else lives in a temporary folder, removed
at the end (--keep keeps it).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSES = 10
PALETTE = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 200, 40), (200, 60, 200),
           (40, 200, 200), (240, 140, 30), (128, 128, 128), (150, 90, 40), (245, 245, 245)]
API_GOAL_B = 10**9
WORKER_GOAL_B = 3 * 10**9
PIPELINE_GOAL = 2.0
GIB = 2**30


# --- the data --------------------------------------------------------------------------------------


def _pattern(cls: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 mask of class cls's pattern on the unit square, with a random phase/position/scale."""
    ph, f = rng.uniform(0, 1), rng.uniform(5, 8)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    if cls == 0:
        m = np.sin(2 * np.pi * (f * yy + ph)) > 0                      # horizontal stripes
    elif cls == 1:
        m = np.sin(2 * np.pi * (f * xx + ph)) > 0                      # vertical stripes
    elif cls == 2:
        m = np.sin(2 * np.pi * (f * (xx + yy) / 1.4 + ph)) > 0         # diagonal stripes
    elif cls == 3:
        m = (np.sin(2 * np.pi * (f * xx + ph)) > 0) ^ (np.sin(2 * np.pi * (f * yy + ph)) > 0)  # checkers
    elif cls == 4:
        m = d < r                                                      # disk
    elif cls == 5:
        m = np.abs(d - r) < 0.05                                       # ring
    elif cls == 6:
        m = (np.abs(yy - cy) < 0.06) | (np.abs(xx - cx) < 0.06)        # cross
    elif cls == 7:
        m = (np.sin(2 * np.pi * (f * xx + ph)) > 0.7) & (np.sin(2 * np.pi * (f * yy + ph)) > 0.7)  # dots
    elif cls == 8:
        m = np.sin(2 * np.pi * (f * d + ph)) > 0                       # concentric rings
    else:
        m = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)              # square
    return m.astype(np.float32)


def make_image(cls: int, size: int, rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    fg = np.clip(np.array(PALETTE[cls], np.float32) + rng.normal(0, 20, 3), 0, 255)
    bg = np.clip(fg * rng.uniform(0.15, 0.45) + rng.normal(0, 15, 3), 0, 255)
    m = _pattern(cls, *grid, rng)[..., None]
    img = bg * (1 - m) + fg * m + rng.normal(0, 18, (size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_zip(path: Path, n_train: int, n_test: int, size: int, seed: int) -> dict[str, Any]:
    """The imagefolder zip (JPEG, quality 90, stored: JPEG does not deflate); balanced, seeded classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = tuple(a.astype(np.float32) / size for a in np.mgrid[0:size, 0:size])
    t0 = time.perf_counter()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                cls = i % CLASSES
                buf = io.BytesIO()
                Image.fromarray(make_image(cls, size, rng, grid)).save(buf, format="JPEG", quality=90)
                # a fixed timestamp: the same seed gives the same zip, byte for byte (and the same store key)
                zf.writestr(zipfile.ZipInfo(f"{split}/class{cls}/{i:06d}.jpg", (2020, 1, 1, 0, 0, 0)),
                            buf.getvalue())
    return {"train": n_train, "test": n_test, "size": size, "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 2)}


# --- memory sampling -------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Every `every` s: RssAnon summed over the API's and the worker's process trees under `up`'s pid;
    peaks per named phase (`phase(name)` starts one; the peaks of every phase are kept)."""

    def __init__(self, up_pid: int, every: float = 0.2):
        super().__init__(name="rss-sampler", daemon=True)
        self.up_pid, self.every = up_pid, every
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.current = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.max_procs: dict[str, int] = {"api": 0, "worker": 0}
        self.samples = 0

    def phase(self, name: str) -> None:
        with self.lock:
            self.current = name

    def roots(self, kids: dict[int, list[int]]) -> dict[str, int]:
        found = {}
        for pid in kids.get(self.up_pid, []):
            cmd = _cmdline(pid)
            if "celery" in cmd or " distillery worker" in cmd:
                found["worker"] = pid
            elif " distillery api" in cmd or "uvicorn" in cmd:
                found["api"] = pid
        return found

    def sample(self) -> None:
        kids = _children_map()
        now = {}
        for part, pid in self.roots(kids).items():
            tree = _tree(pid, kids)
            now[part] = sum(rss_anon(p) for p in tree)
            self.max_procs[part] = max(self.max_procs[part], len(tree))
        with self.lock:
            peaks = self.peaks.setdefault(self.current, {"api": 0, "worker": 0})
            for part, b in now.items():
                peaks[part] = max(peaks[part], b)
            self.samples += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.every)

    def peak(self, part: str, phases: list[str] | None = None) -> int:
        with self.lock:
            return max([p.get(part, 0) for name, p in self.peaks.items() if phases is None or name in phases] or [0])


# --- the service -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(tmp: Path) -> tuple[subprocess.Popen, str, Any]:
    """`distillery up` from this worktree (python -m, PYTHONPATH=ROOT), its own process group."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for var in ("KD_REDIS_URL", "KD_DATA_DIR", "KD_API_KEYS", "KD_API_KEYS_FILE", "KD_PREPARED_DIR"):
        env.pop(var, None)
    log = open(tmp / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "distillery", "up", "--port", str(port), "--data-dir",
                           str(tmp / "data")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return up, base, log
        except httpx.HTTPError:
            pass
        if time.time() - t0 > 180 or up.poll() is not None:
            stop_service(up, log)
            sys.exit("service did not come up: " + (tmp / "up.log").read_text()[-2000:])
        time.sleep(0.5)


def stop_service(up: subprocess.Popen, log: Any) -> None:
    try:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()
    except ProcessLookupError:
        pass
    log.close()


def wait_job(http: httpx.Client, job_id: str, label: str, timeout: float,
             sampler: Sampler | None = None) -> dict[str, Any]:
    """Polls the job to its end. The sampler's phase follows the job: `<label>` before its first progress
    (loading, scoring the teacher, building the teacher cache), `<label>:prepare`, `<label>:distill` (the
    training steps), `<label>:after-steps` (the last step done: evaluation, saving)."""
    t0, last = time.time(), -1.0
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        p = job.get("progress") or {}
        if sampler is not None and p.get("phase"):
            done = p["phase"] != "prepare" and (p.get("fraction") or 0) >= 0.999
            sampler.phase(f"{label}:{'after-steps' if done else p['phase']}")
        if p.get("fraction") is not None and abs(p["fraction"] - last) >= 0.1:
            last = p["fraction"]
            print(f"  {label}: {job['status']} {p.get('phase')} {100 * p['fraction']:.0f}%", flush=True)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.time() - t0 > timeout:
            http.post(f"/v1/jobs/{job_id}/cancel")
            return {**job, "status": "timeout"}
        time.sleep(0.25)


def all_events(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    out, after = [], "0-0"
    while True:
        rows = http.get(f"/v1/jobs/{job_id}/events", params={"after": after, "limit": 10000}).json()["data"]
        if not rows:
            return out
        out += rows
        after = rows[-1]["id"]


def job_numbers(job: dict[str, Any], events: list[dict[str, Any]], n_train: int, wall: float) -> dict[str, Any]:
    rep = job.get("report") or {}
    epochs = rep.get("epochs") or []
    train_s = sum(e.get("seconds", 0.0) for e in epochs)
    prep = [e for e in events if e["type"] == "progress" and e["data"].get("phase") == "prepare"]
    ready = [e["data"]["message"] for e in events
             if e["type"] == "log" and "prepared dataset" in e["data"].get("message", "")]
    ready_s = None
    if ready:
        try:
            ready_s = float(ready[0].rsplit("ready in", 1)[1].split()[0])
        except (IndexError, ValueError):
            pass
    prep_span = None
    if len(prep) >= 2:  # stream ids are <ms>-<seq>: the span from the first to the last prepare event
        prep_span = (int(prep[-1]["id"].split("-")[0]) - int(prep[0]["id"].split("-")[0])) / 1000
    total = prep[-1]["data"]["steps"] if prep else 0
    return {
        "id": job["id"], "status": job["status"], "error": job.get("error"),
        "wall_seconds": round(wall, 2), "report_wall_seconds": rep.get("wall_seconds"),
        "train_seconds": round(train_s, 2), "train_images_per_s": round(n_train * len(epochs) / train_s, 1)
        if train_s else None,
        "epochs": [{"seconds": e.get("seconds"), "eval_seconds": e.get("eval_seconds"),
                    "test_top1": e.get("test_top1")} for e in epochs],
        "test_top1": (rep.get("student") or {}).get("top1"), "teacher_cache": rep.get("teacher_cache"),
        "prepare": {"events": len(prep), "images": total, "ready_log": ready[0] if ready else None,
                    "ready_seconds": ready_s, "events_span_seconds": prep_span,
                    "images_per_s": round(total / ready_s, 1) if ready_s else None},
    }


# --- the input pipeline alone ----------------------------------------------------------------------


class MemmapRows:
    """A map-style Dataset over a prepared split's memmap, as one would write it for a DataLoader: one
    row per item, normalized there."""

    def __init__(self, path: Path, mean: tuple[float, ...], std: tuple[float, ...]):
        self.path, self.x = path, None
        self.n = int(np.load(path, mmap_mode="r").shape[0])
        self.mean = np.array(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.array(std, np.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        import torch

        if self.x is None:  # opened in each DataLoader worker
            self.x = np.load(self.path, mmap_mode="r")
        row = np.asarray(self.x[i], dtype=np.float32) / 255.0
        return torch.from_numpy((row - self.mean) / self.std)


def _timed_epoch(batches: Any) -> tuple[float, int, float]:
    t0 = time.perf_counter()
    n, first = 0, None
    for x in batches:
        x = x[0] if isinstance(x, list | tuple) else x
        n += int(x.shape[0])
        if first is None:
            first = time.perf_counter() - t0
    return time.perf_counter() - t0, n, first or 0.0


def pipeline(store_dir: Path, zip_path: Path, tmp: Path, size: int, batch_size: int, workers: int,
             seed: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from kdcore.datasets.store import PreparedStore

    data = PreparedStore(store_dir.parent).get(store_dir.name)
    assert data is not None, f"no prepared store at {store_dir}"
    split = data.train
    n = len(split)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"batch_size": batch_size, "num_workers": workers, "images": n,
                           "torch_threads": torch.get_num_threads()}

    order = torch.randperm(n, generator=g)
    steps = -(-n // batch_size)
    s, got, first = _timed_epoch(split.batches(order, batch_size, steps))
    out["a_prepared_batches"] = {"seconds": round(s, 3), "images": got, "images_per_s": round(got / s, 1),
                                 "first_batch_s": round(first, 3)}

    folder = tmp / "extracted"
    t0 = time.perf_counter()
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(folder, [m for m in zf.namelist() if m.startswith("train/")])
    out["extract_seconds"] = round(time.perf_counter() - t0, 2)
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(split.mean, split.std)])
    ds = datasets.ImageFolder(str(folder / "train"), transform=tf)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                    generator=torch.Generator().manual_seed(seed))
    s, got, first = _timed_epoch(dl)
    out["b_torchvision_imagefolder"] = {"seconds": round(s, 3), "images": got, "images_per_s": round(got / s, 1),
                                        "first_batch_s": round(first, 3)}

    dl = DataLoader(MemmapRows(store_dir / "train_x.npy", split.mean, split.std), batch_size=batch_size,
                    shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed))
    s, got, first = _timed_epoch(dl)
    out["c_dataloader_memmap"] = {"seconds": round(s, 3), "images": got, "images_per_s": round(got / s, 1),
                                  "first_batch_s": round(first, 3)}
    a = out["a_prepared_batches"]["images_per_s"]
    out["a_over_b"] = round(a / out["b_torchvision_imagefolder"]["images_per_s"], 2)
    out["a_over_c"] = round(a / out["c_dataloader_memmap"]["images_per_s"], 2)
    return out


# --- the report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem / GIB, 1), "kernel": platform.release()}


def _mib(b: int) -> float:
    return round(b / 2**20, 1)


def table(r: dict[str, Any]) -> str:
    t, k, p, g = r["teacher_job"], r["kd_job"], r["pipeline"], r["goals"]
    rows = [
        ("upload: wall s / API peak RssAnon MiB", f"{r['upload']['seconds']} / {r['upload']['api_peak_rss_anon_mib']}"),
        ("prepare (teacher job): s / images/s", f"{t['prepare']['ready_seconds']} / {t['prepare']['images_per_s']}"),
        ("first epoch incl. preparation, s", f"{r['first_epoch_with_prepare_seconds']}"),
        ("teacher job (none, convnet): wall s", f"{t['wall_seconds']}"),
        ("teacher: train images/s / test top-1", f"{t['train_images_per_s']} / {t['test_top1']}"),
        ("kd job (store reused): wall s", f"{k['wall_seconds']} (prepare events: {k['prepare']['events']})"),
        ("kd student: train images/s / test top-1", f"{k['train_images_per_s']} / {k['test_top1']}"),
        ("worker peak RssAnon MiB (all jobs)", f"{r['worker_peak_rss_anon_mib']}"),
        ("(a) PreparedSplit.batches images/s", f"{p['a_prepared_batches']['images_per_s']}"),
        ("(b) torchvision ImageFolder+DataLoader images/s", f"{p['b_torchvision_imagefolder']['images_per_s']}"),
        ("(c) DataLoader over the memmap images/s", f"{p['c_dataloader_memmap']['images_per_s']}"),
        ("ratios a/b, a/c", f"{p['a_over_b']}x, {p['a_over_c']}x"),
    ] + [(f"goal: {name}", verdict) for name, verdict in g.items()]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000, help="train images (the test split adds 10 %%); "
                    "the issue's full scale is 50000")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64, help="the jobs' batch size")
    ap.add_argument("--pipeline-batch-size", type=int, default=128)
    ap.add_argument("--pipeline-workers", type=int, default=2)
    ap.add_argument("--teacher", default="16,32,64", help="teacher convnet channels")
    ap.add_argument("--student", default="8,16", help="student convnet channels")
    ap.add_argument("--job-timeout", type=float, default=1200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_scale.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    import torch

    started = datetime.now(UTC)
    load_start = loadavg()
    n_train, n_test = args.images, max(CLASSES, args.images // 10)
    tmp = Path(tempfile.mkdtemp(prefix="kd-data-scale-"))
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "machine": machine(), "torch": torch.__version__,
        "command": "python benchmarks/data_scale.py " + " ".join(sys.argv[1:]),
        "images": n_train, "test_images": n_test, "size": args.size, "seed": args.seed, "classes": CLASSES,
        "load_average_start": load_start,
    }
    up = log = None
    try:
        zip_path = tmp / "images.zip"
        print(f"making {n_train} + {n_test} images at {args.size} px ...", flush=True)
        result["data"] = make_zip(zip_path, n_train, n_test, args.size, args.seed)
        print(f"  {result['data']}", flush=True)

        up, base, log = start_service(tmp)
        sampler = Sampler(up.pid)
        sampler.start()
        time.sleep(1.0)
        recipe = {"epochs": 1, "batch_size": args.batch_size, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                  "weight_decay": 5e-4, "lr_schedule": "cosine", "seed": args.seed}
        with httpx.Client(base_url=base, timeout=httpx.Timeout(60, read=600)) as http:
            catalog = http.get("/v1/catalog").json()
            assert "convnet" in json.dumps(catalog), "convnet not in the catalog"

            sampler.phase("upload")
            t0 = time.perf_counter()
            with open(zip_path, "rb") as f:
                r = http.post("/v1/artifacts", files={"file": ("images.zip", f, "application/zip")})
            upload_s = time.perf_counter() - t0
            sampler.sample()
            sampler.phase("idle")
            if r.status_code != 201:
                raise SystemExit(f"upload refused: {r.status_code} {r.text[:1000]}")
            art = r.json()
            result["upload"] = {"seconds": round(upload_s, 2), "bytes": zip_path.stat().st_size,
                                "mb_per_s": round(zip_path.stat().st_size / upload_s / 1e6, 1),
                                "api_peak_rss_anon_mib": _mib(sampler.peak("api", ["upload"])),
                                "api_rss_anon_before_mib": _mib(sampler.peak("api", ["start"])),
                                "artifact": art["id"], "format": art.get("format")}
            print(f"upload: {result['upload']}", flush=True)

            jobs = {}
            for label, spec in (
                ("teacher_job", {"name": "data-scale-teacher", "distillation": {"method": "none"},
                                 "student": {"architecture": "convnet", "kwargs": {
                                     "channels": [int(c) for c in args.teacher.split(",")], "hidden": 128}}}),
                ("kd_job", {"name": "data-scale-kd", "distillation": {"method": "kd", "temperature": 4.0,
                                                                       "alpha": 0.9},
                            "student": {"architecture": "convnet", "kwargs": {
                                "channels": [int(c) for c in args.student.split(",")], "hidden": 64}}}),
            ):
                if label == "kd_job":
                    spec["teacher"] = {"job": jobs["teacher_job"]["id"]}
                spec.update(dataset={"name": "imagefolder", "artifact": art["id"]}, training=recipe,
                            resources={"device": "cpu"})
                sampler.phase(label)
                t0 = time.perf_counter()
                r = http.post("/v1/jobs", json=spec)
                if r.status_code != 202:
                    raise SystemExit(f"{label} refused: {r.status_code} {r.text[:1000]}")
                job = wait_job(http, r.json()["id"], label, args.job_timeout, sampler)
                wall = time.perf_counter() - t0
                sampler.sample()
                numbers = job_numbers(job, all_events(http, job["id"]), n_train, wall)
                numbers["spec"] = {"student": spec["student"], "method": spec["distillation"]["method"],
                                   "training": recipe}
                mine = [ph for ph in list(sampler.peaks) if ph.split(":")[0] == label]
                numbers["worker_peak_rss_anon_mib"] = _mib(sampler.peak("worker", mine))
                jobs[label] = numbers
                print(f"{label}: {json.dumps({k: v for k, v in numbers.items() if k != 'epochs'})}", flush=True)
                if job["status"] != "succeeded":
                    break
            sampler.phase("idle")
        result.update(jobs)
        result["worker_peak_rss_anon_mib"] = _mib(sampler.peak("worker"))
        result["api_peak_rss_anon_mib_whole_run"] = _mib(sampler.peak("api"))
        result["memory_samples"] = sampler.samples
        result["max_processes"] = sampler.max_procs
        result["memory_peaks_by_phase_mib"] = {ph: {k: _mib(v) for k, v in p.items()}
                                               for ph, p in sampler.peaks.items()}
        sampler.stop_event.set()
        sampler.join()
        stop_service(up, log)
        up = None
        t = jobs.get("teacher_job", {})
        if t.get("status") == "succeeded":
            result["first_epoch_with_prepare_seconds"] = round((t["prepare"]["ready_seconds"] or 0)
                                                               + t["epochs"][0]["seconds"], 2)
        prepared = [p for p in (tmp / "data" / "prepared").iterdir() if not p.name.startswith(".")] \
            if (tmp / "data" / "prepared").is_dir() else []
        if len(prepared) != 1:
            raise SystemExit(f"expected one prepared store, found {prepared}")
        result["prepared_store_bytes"] = sum(f.stat().st_size for f in prepared[0].iterdir())
        print("input pipeline, no model ...", flush=True)
        result["pipeline"] = pipeline(prepared[0], zip_path, tmp, args.size, args.pipeline_batch_size,
                                      args.pipeline_workers, args.seed)
        print(f"  {result['pipeline']}", flush=True)
    finally:
        if up is not None:
            stop_service(up, log)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    jobs_ok = all(result.get(k, {}).get("status") == "succeeded" for k in ("teacher_job", "kd_job"))
    reused = jobs_ok and result["kd_job"]["prepare"]["events"] == 0 and result["teacher_job"]["prepare"]["events"] > 0

    def verdict(ok: bool, text: str) -> str:
        return ("PASS" if ok else "FAIL") + f" ({text})"

    api_b = result["upload"]["api_peak_rss_anon_mib"] * 2**20
    wk_b = result["worker_peak_rss_anon_mib"] * 2**20
    ratio = result["pipeline"]["a_over_b"]
    events = {k: result.get(k, {}).get("prepare", {}).get("events") for k in ("teacher_job", "kd_job")}
    api_mib, wk_mib = result["upload"]["api_peak_rss_anon_mib"], result["worker_peak_rss_anon_mib"]
    result["goals"] = {
        "API peak RssAnon during upload < 1 GB": verdict(api_b < API_GOAL_B, f"{api_mib} MiB"),
        "worker peak RssAnon < 3 GB": verdict(wk_b < WORKER_GOAL_B, f"{wk_mib} MiB"),
        "pipeline (a) >= 2x torchvision DataLoader (b)": verdict(ratio >= PIPELINE_GOAL, f"{ratio}x"),
        "both jobs succeeded, the second reused the store": verdict(
            reused, f"prepare events: teacher {events['teacher_job']}, kd {events['kd_job']}"),
    }
    result["load_average_end"] = loadavg()
    result["total_seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    try:
        print(table(result))
    except (KeyError, TypeError) as e:  # a job that failed leaves numbers out; the JSON says what ran
        print(f"(no table: {e!r})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(v.startswith("PASS") for v in result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
