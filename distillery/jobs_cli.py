"""`distillery jobs ...` and `distillery artifacts ...`: the service from a terminal, through
distillery.client (the one HTTP layer). typer + rich; `up`, `api` and `worker` stay in distillery/cli.py.

    distillery jobs submit spec.yaml --follow     # YAML or JSON
    distillery jobs list | show ID | follow ID | cancel ID | report ID | download ID [NAME]
    distillery artifacts upload teacher.safetensors

The server and key come from --url/--key or DISTILLERY_URL / DISTILLERY_API_KEY. Any API error is one
line on stderr and exit status 1; Ctrl-C while following leaves the job running.
"""
from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from distillery import render_cli as view
from distillery.client import Client, load_spec
from distillery.client.common import DEFAULT_URL, KEY_ENV, URL_ENV
from distillery.client.errors import ApiError
from distillery.client.models import Status

# show_locals off: an unexpected crash must not print the API key held in a local variable
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False,
                  help="Knowledge distillation as a service (Distillery): the client commands.")
jobs = typer.Typer(no_args_is_help=True, help="Submit, list, follow, cancel jobs; read reports; download outputs.")
artifacts = typer.Typer(no_args_is_help=True, help="Upload teacher checkpoints and datasets.")
app.add_typer(jobs, name="jobs")
app.add_typer(artifacts, name="artifacts")

Url = Annotated[str, typer.Option("--url", envvar=URL_ENV, show_envvar=True, help="the Distillery server")]
Key = Annotated[str | None, typer.Option("--key", envvar=KEY_ENV, show_envvar=True, show_default=False,
                                         help="API key (sent as `Authorization: Bearer`)")]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]
JobId = Annotated[str, typer.Argument(help="the job's id (job_...)", show_default=False)]
F = TypeVar("F", bound=Callable[..., Any])
# Exit status when the user stops following with Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130


def out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def api_errors(fn: F) -> F:
    """An API error (or an unreadable spec file) becomes one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            err().print(f"distillery: error: {e.line()}", markup=False)
            raise typer.Exit(1) from None
        except (OSError, ValueError) as e:  # a spec file missing or not YAML/JSON; a folder not writable
            err().print(f"distillery: error: {e}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def follow_job(client: Client, job_id: str, console: Console) -> int:
    """Shows the job's events live until it ends; 0 when it succeeded (and its report), 1 when it failed
    or was cancelled, INTERRUPTED on Ctrl-C (the job goes on)."""
    try:
        with view.FollowView(console, job_id) as live:
            for event in client.jobs.events(job_id):
                live.show(event)
    except KeyboardInterrupt:
        console.print(f"\nStopped following; job {job_id} keeps running on the server.\n"
                      f"  follow it again:  distillery jobs follow {job_id}\n"
                      f"  cancel it:        distillery jobs cancel {job_id}", markup=False)
        return INTERRUPTED
    job = client.jobs.get(job_id)
    if job.status == Status.SUCCEEDED:
        show_report(client, job_id, console)
        return 0
    why = f": {job.error.code}: {job.error.message}" if job.error else ""
    err().print(f"distillery: job {job_id} {job.status}{why}", markup=False)
    return 1


def show_report(client: Client, job_id: str, console: Console) -> None:
    report = client.jobs.report(job_id)
    console.print(view.report_table(report))
    for line in view.report_summary(report):
        console.print(line, markup=False)


@jobs.command("submit")
@api_errors
def submit(spec: Annotated[Path, typer.Argument(help="a JobSpec file, .yaml or .json", show_default=False)],
           follow: Annotated[bool, typer.Option("--follow", "-f", help="then follow it to the end")] = False,
           idempotency_key: Annotated[str | None, typer.Option(help="submitting again with the same key "
                                                               "returns the first job")] = None,
           url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Submit a job from a YAML or JSON JobSpec."""
    console = out()
    with Client(url, key) as client:
        job = client.jobs.create(load_spec(spec), idempotency_key=idempotency_key)
        console.print(f"{job.id} {job.status} on the {job.queue} queue", markup=False)
        if follow:
            raise typer.Exit(follow_job(client, job.id, console))
        console.print(f"follow it: distillery jobs follow {job.id}", markup=False)


@jobs.command("list")
@api_errors
def list_jobs(status: Annotated[Status | None, typer.Option(help="only jobs with this status")] = None,
              limit: Annotated[int, typer.Option(min=1, max=200, help="at most this many, newest first")] = 20,
              cursor: Annotated[str | None, typer.Option(help="the next page: the cursor the last page named")]
              = None,
              as_json: AsJson = False, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """List jobs, newest first."""
    with Client(url, key) as client:
        page = client.jobs.list(status=status, limit=limit, cursor=cursor)
    if as_json:
        print(page.model_dump_json(indent=2))
        return
    t = Table(box=None, pad_edge=False)  # no borders: a page of jobs fits 80 columns
    for col in ("id", "status", "done", "top-1", "created", "name"):
        t.add_column(col, no_wrap=col != "name")
    for job in page.data:
        top1 = (job.report or {}).get("student", {}).get("top1")
        frac = job.progress.fraction
        t.add_row(job.id, str(job.status), view.pct(frac) if frac is not None else "",
                  view.pct(top1) if top1 is not None else "", job.created_at[:16].replace("T", " "), job.name or "")
    console = out()
    console.print(t)
    if page.next_cursor and len(page.data) == limit:
        console.print(f"more: distillery jobs list --cursor {page.next_cursor}"
                      + (f" --status {status}" if status else "") + (f" --limit {limit}" if limit != 20 else ""),
                      markup=False)


@jobs.command("show")
@api_errors
def show(job_id: JobId, as_json: AsJson = False, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """A job's status, progress, latest metrics and error."""
    with Client(url, key) as client:
        job = client.jobs.get(job_id)
    if as_json:
        print(job.model_dump_json(indent=2))
    else:
        out().print(view.job_table(job))


@jobs.command("follow")
@api_errors
def follow(job_id: JobId, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Follow a job live (a progress bar per phase, a line per epoch) until it ends, then show its report.
    Exit status 0 when it succeeded, 1 when it failed or was cancelled; Ctrl-C stops following only."""
    with Client(url, key) as client:
        raise typer.Exit(follow_job(client, job_id, out()))


@jobs.command("cancel")
@api_errors
def cancel(job_id: JobId, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Ask a queued or running job to stop."""
    with Client(url, key) as client:
        job = client.jobs.cancel(job_id)
    out().print(view.job_line(job), markup=False)


@jobs.command("report")
@api_errors
def report(job_id: JobId, as_json: AsJson = False, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """The report of a succeeded job: teacher vs student, KD gain, size, latency (when measured)."""
    with Client(url, key) as client:
        if as_json:
            print(json.dumps(client.jobs.report(job_id).model_dump(exclude_none=True), indent=2))
        else:
            show_report(client, job_id, out())


@jobs.command("download")
@api_errors
def download(job_id: JobId,
             name: Annotated[str, typer.Argument(help="student.safetensors, report.json, curves.png, ...")]
             = "student.safetensors",
             output: Annotated[Path | None, typer.Option("--output", "-o", help="a file, or a folder for "
                                                         "<job>-<name> (default: the current folder)")] = None,
             url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Download one of a succeeded job's outputs."""
    with Client(url, key) as client:
        path = client.jobs.download(job_id, name, output)
    out().print(f"{path} ({view.size(path.stat().st_size)})", markup=False)


@artifacts.command("upload")
@api_errors
def upload(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, show_default=False,
                                                help=".safetensors, .pt/.pth, .pt2, .onnx, .npz or .zip")],
           url: Url = DEFAULT_URL, key: Key = None) -> None:
    """Upload a teacher checkpoint or a dataset (streamed from disk); prints the id to use in a JobSpec."""
    with Client(url, key) as client:
        art = client.artifacts.upload(file)
    out().print(f"{art.id}  {art.format}  {view.size(art.size)}  sha256 {art.sha256}", markup=False)


def run(argv: Sequence[str]) -> int:
    """Runs one client command; returns its exit status (typer's own usage errors give 2)."""
    try:
        app(args=list(argv), prog_name="distillery", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover - `distillery jobs ...` is the way in
    sys.exit(run(sys.argv[1:]))
