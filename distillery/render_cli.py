"""What `distillery jobs ...` shows: the live progress of a followed job (rich progress bars fed by the
job's server-sent events) and the report table. Kept apart from the commands (distillery/jobs_cli.py)
so the layout can change without touching how requests are made."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from distillery.client.models import Event, JobInfo, Report


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def count(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


EPOCH_LINES = 25  # a long run prints about this many epoch lines (the bars show every epoch)


def _worth_a_line(epoch: int, epochs: int) -> bool:
    every = max(1, -(-epochs // EPOCH_LINES))
    return epochs <= EPOCH_LINES or epoch % every == 0 or epoch in (1, epochs)


class FollowView:
    """One progress bar per training phase (distill, baseline, ...), advanced per epoch, with the latest
    loss, the test accuracy of the last epoch and the server's ETA; a line per epoch and per status
    change above the bars (in a pipe or a log these lines are what remains)."""

    def __init__(self, console: Console, job_id: str) -> None:
        self.console = console
        self.job_id = job_id
        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TextColumn("epochs  loss {task.fields[loss]}  acc {task.fields[acc]}  ETA {task.fields[eta]}"),
            console=console, transient=False, auto_refresh=console.is_terminal)
        self.tasks: dict[str, TaskID] = {}
        self.final: str | None = None

    def __enter__(self) -> FollowView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, phase: str, epochs: int | None = None, done: int = 0) -> TaskID:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=epochs, completed=done, loss="-", acc="-",
                                                       eta="-:--")
        return self.tasks[phase]

    def print(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def show(self, event: Event) -> None:
        d = event.data
        if event.type == "status":
            self.print(f"[dim]{event.ts or ''}[/]  {self.job_id} [bold]{d.get('status')}[/]")
        elif event.type == "phase":
            if d.get("epochs"):
                self._task(d.get("phase", "train"), d.get("epochs"), d.get("start_epoch") or 0)
            else:  # a phase without epochs (export): a line, no bar
                extra = ", ".join(f"{k} {v}" for k, v in d.items() if k != "phase")
                self.print(f"  phase {d.get('phase')}" + (f": {extra}" if extra else ""))
        elif event.type == "progress":
            task = self._task(d.get("phase", "train"), d.get("epochs"))
            fields: dict[str, Any] = {"eta": duration(d.get("eta_s"))}
            if d.get("loss") is not None:
                fields["loss"] = f"{d['loss']:.4f}"
            self.progress.update(task, **fields)
            self.progress.refresh()
        elif event.type == "epoch":
            phase = d.get("phase", "train")
            task = self._task(phase, d.get("epochs"))
            self.progress.update(task, completed=d.get("epoch", 0), loss=f"{d.get('train_loss', 0):.4f}",
                                 acc=pct(d.get("test_top1")))
            if _worth_a_line(d.get("epoch") or 0, d.get("epochs") or 0):
                self.print(f"  {phase} epoch {d.get('epoch')}/{d.get('epochs')}  loss {d.get('train_loss', 0):.4f}  "
                           f"test acc {pct(d.get('test_top1'))}  ({d.get('seconds', 0):.2f} s)")
        elif event.type == "log":
            style = "yellow" if d.get("level") in ("warning", "error") else "dim"
            self.print(f"  [{style}]{d.get('message', '')}[/]")
        elif event.type == "end":
            self.final = d.get("status")
            for task in self.tasks.values():
                self.progress.update(task, eta="0:00")


def job_line(job: JobInfo) -> str:
    frac = job.progress.fraction
    done = f" {pct(frac)}" if frac is not None and not job.ended else ""
    return f"{job.id}  {job.status}{done}"


def job_table(job: JobInfo) -> Table:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    spec = job.spec
    student = spec.get("student") or {}
    teacher = spec.get("teacher") or {}
    rows = [("id", job.id), ("name", job.name or "-"), ("status", str(job.status)), ("queue", job.queue),
            ("created", job.created_at), ("started", job.started_at or "-"), ("finished", job.finished_at or "-"),
            ("method", (spec.get("distillation") or {}).get("method", "-")),
            ("dataset", (spec.get("dataset") or {}).get("name", "-")),
            ("student", f"{student.get('architecture')} {student.get('kwargs') or ''}".strip()),
            ("teacher", teacher.get("job") or teacher.get("checkpoint") or "-")]
    p = job.progress
    if p.epochs and not job.ended:
        rows.append(("progress", f"{p.phase} epoch {p.epoch}/{p.epochs}, {pct(p.fraction)} done, "
                                 f"ETA {duration(p.eta_s)}"))
    if job.metrics:
        m = job.metrics
        rows.append(("last epoch", f"{m.get('phase')} {m.get('epoch')}: loss {m.get('train_loss', 0):.4f}, "
                                   f"test acc {pct(m.get('test_top1'))}"))
    if job.waiting_for:
        rows.append(("waiting for", ", ".join(job.waiting_for)))
    if job.error:
        rows.append(("error", f"[red]{job.error.code}: {job.error.message}[/]"))
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _latency_rows(latency: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (label, teacher, student) from the report's `export.latency`: one per batch size."""
    return [(f"latency, batch {bs}", ms(row.get("teacher_ms")), ms(row.get("student_ms")))
            for bs, row in (latency.get("batches") or {}).items() if isinstance(row, dict)]


def report_table(report: Report) -> Table:
    """Teacher vs student (the student alone for a job without a teacher): accuracy, size, latency."""
    models = [("teacher", report.teacher)] if report.teacher else []
    models.append(("student", report.student))
    t = Table(title=f"method {report.method} on {report.dataset}", title_justify="left")
    t.add_column("")
    for name, _ in models:
        t.add_column(name, justify="right")

    def row(label: str, fmt: Callable[[Any], str], field: str) -> None:
        t.add_row(label, *(fmt(getattr(stats, field)) for _, stats in models))

    row("top-1", pct, "top1")
    if report.student.top5 is not None:
        row("top-5", pct, "top5")
    row("params", count, "params")
    row("size", size, "size_bytes")
    for label, teacher_ms, student_ms in _latency_rows(report.latency or {}):
        t.add_row(label, *([teacher_ms] if report.teacher else []), student_ms)
    return t


def report_summary(report: Report) -> list[str]:
    lines = []
    if report.kd_gain is not None and report.baseline:
        lines.append(f"KD gain: {100 * report.kd_gain:+.1f} points over the same student trained on labels alone "
                     f"({pct(report.baseline.get('top1'))})")
    if report.compression:
        lines.append(f"compression: {report.compression:.1f}x fewer parameters")
    if report.agreement is not None:
        lines.append(f"agreement with the teacher: {pct(report.agreement)}")
    latency = report.latency or {}
    speedups = {bs: row["speedup"] for bs, row in (latency.get("batches") or {}).items()
                if isinstance(row, dict) and isinstance(row.get("speedup"), int | float)}
    if speedups:
        lines.append("speed-up: " + ", ".join(f"{v:.1f}x at batch {bs}" for bs, v in speedups.items())
                     + f" ({latency.get('statistic', 'median')} on {latency.get('device', '?')})")
    for name, made in (report.export or {}).items():
        if not isinstance(made, dict) or name == "latency":
            continue
        if not made.get("file"):
            lines.append(f"export {name}: not kept: {made.get('error', 'unknown error')}")
        elif name == "int8":
            lines.append(f"export: {made['file']} ({size(made.get('size_bytes'))}), top-1 {pct(made.get('top1'))} "
                         f"({100 * (made.get('top1_change') or 0):+.1f} points vs the fp32 student)")
        else:
            lines.append(f"export: {made['file']} ({size(made.get('size_bytes'))}), checked against the trained "
                         f"student: max |diff| {made.get('max_abs_diff', 0):.1e}, argmax agreement "
                         f"{pct(made.get('agreement'))}")
    return lines
