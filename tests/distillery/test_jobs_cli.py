"""`distillery jobs ...` and `distillery artifacts ...` against a real `distillery up` (embedded Redis, a
worker, the API) that requires an API key: submit and follow to the report (a YAML and a JSON spec), list,
show, report, download, upload as a teacher; Ctrl-C while following leaves the job running and says how to
cancel it; API errors are one line and exit status 1. Most commands run in this process (`cli.main`, the
same entry point as the console script, over real HTTP); the following ones run as a user's process."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from distillery import cli
from distillery.client import Client, Status
from distillery.redis_server import free_port
from tests import helpers
from tests.harness import Up, clean_env, distillery_argv, distillery_up, spawn, wait_for

KEY = "cli-key"
FAST = {"epochs": 2, "batch_size": 64, "lr": 0.05, "seed": 0}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("jobs-cli")
    with distillery_up(tmp, clean_env({"KD_API_KEYS": f"{KEY}:cli"}), "--queues", "cpu") as running:
        yield running


@pytest.fixture
def user_env(up: Up, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The server and key as a user sets them, for this process and the processes it starts."""
    monkeypatch.setenv("DISTILLERY_URL", up.base)
    monkeypatch.setenv("DISTILLERY_API_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "100")  # rich sizes tables to the terminal; a pipe has none
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_submit_follow_report_list_show_download_and_upload_as_teacher(
        user_env: dict[str, str], up: Up, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_yaml = tmp_path / "teacher.yaml"
    teacher_yaml.write_text(yaml.safe_dump(helpers.spec(name="cli-teacher", training=FAST)))
    # as a user's process: the console entry point, a pipe for output (no terminal)
    done = subprocess.run(distillery_argv("jobs", "submit", str(teacher_yaml), "--follow"), env=user_env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    teacher_id = done.stdout.split()[0]
    assert teacher_id.startswith("job_") and f"{teacher_id} queued on the cpu queue" in done.stdout
    for line in (f"{teacher_id} running", "distill epoch 1/2  loss", "distill epoch 2/2  loss",
                 f"{teacher_id} succeeded", "2/2 epochs", "method none on digits", "top-1"):
        assert line in done.stdout, done.stdout
    assert done.stderr == ""

    code, out, _ = run(capsys, "jobs", "list", "--status", "succeeded")
    assert code == 0 and teacher_id in out and "cli-teacher" in out
    code, out, _ = run(capsys, "jobs", "show", teacher_id)
    assert code == 0 and "digits" in out and "succeeded" in out and "last epoch" in out
    code, out, _ = run(capsys, "jobs", "show", teacher_id, "--json")
    assert code == 0 and json.loads(out)["id"] == teacher_id

    code, out, _ = run(capsys, "jobs", "download", teacher_id, "-o", str(tmp_path))
    weights = tmp_path / f"{teacher_id}-student.safetensors"
    assert code == 0 and str(weights) in out
    with Client(up.base, KEY) as client:
        assert weights.read_bytes() == client.http.get(f"/v1/jobs/{teacher_id}/artifacts/student.safetensors").content
    code, out, _ = run(capsys, "artifacts", "upload", str(weights))
    art_id = out.split()[0]
    assert code == 0 and art_id.startswith("art_") and "safetensors" in out

    kd = helpers.kd_spec({"checkpoint": art_id, "architecture": "mlp", "kwargs": {"hidden": helpers.TEACHER_HIDDEN}},
                         epochs=2, baseline=True, name="cli-kd", export={"formats": [], "latency": True})
    kd_json = tmp_path / "kd.json"
    kd_json.write_text(json.dumps(kd))
    code, out, _ = run(capsys, "jobs", "submit", str(kd_json))
    kd_id = out.split()[0]
    assert code == 0 and f"distillery jobs follow {kd_id}" in out
    code, out, _ = run(capsys, "jobs", "follow", kd_id)
    assert code == 0, out
    for line in ("distill epoch 2/2", "baseline epoch 2/2", "teacher", "student", "KD gain:", "compression:"):
        assert line in out, out

    code, out, _ = run(capsys, "jobs", "report", kd_id, "--json")
    report = json.loads(out)
    assert code == 0 and report["kd_gain"] == pytest.approx(report["student"]["top1"] - report["baseline"]["top1"],
                                                              abs=1e-5)
    code, out, _ = run(capsys, "jobs", "report", kd_id)
    assert code == 0 and f"{100 * report['kd_gain']:+.1f} points" in out
    assert f"{report['compression']:.1f}x" in out
    for bs, row in report["export"]["latency"]["batches"].items():  # teacher vs student, measured on the worker
        assert re.search(rf"latency, batch {bs}\W+{row['teacher_ms']:.3f} ms\W+{row['student_ms']:.3f} ms", out), out
        assert f"{row['speedup']:.1f}x at batch {bs}" in out

    code, out, _ = run(capsys, "jobs", "list", "--limit", "1")  # newest first, one a page
    assert code == 0 and kd_id in out and teacher_id not in out
    more = out.strip().splitlines()[-1]
    assert more.startswith("more: distillery jobs list --cursor ") and more.endswith("--limit 1")
    code, out, _ = run(capsys, *more.removeprefix("more: distillery ").split())
    assert code == 0 and teacher_id in out and kd_id not in out


def test_ctrl_c_while_following_leaves_the_job_running(user_env: dict[str, str], up: Up, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(helpers.spec(name="cli-long", training={**FAST, "epochs": 500})))
    log = tmp_path / "follow.log"
    follower = spawn(distillery_argv("jobs", "submit", str(long), "--follow"), user_env, log)
    try:
        wait_for("the first epoch line", lambda: "epoch 1/500" in log.read_text(), timeout=120)
        os.killpg(follower.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert follower.wait(30) == 130
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGKILL)
    text = log.read_text()
    job_id = text.split()[0]
    assert "keeps running on the server" in text and f"distillery jobs cancel {job_id}" in text
    with Client(up.base, KEY) as client:
        assert client.jobs.get(job_id).status == Status.RUNNING

    code, out, _ = run(capsys, "jobs", "cancel", job_id)
    assert code == 0 and job_id in out
    code, out, err = run(capsys, "jobs", "follow", job_id)  # to its end: cancelled, exit status 1
    assert code == 1 and f"job {job_id} cancelled" in err


def test_api_errors_are_one_line_and_exit_status_1(user_env: dict[str, str], up: Up, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(helpers.spec(student={"architecture": "no-such-net"})))
    broken = tmp_path / "broken.yaml"
    broken.write_text("student: {architecture: mlp\ndataset: [")
    listed = tmp_path / "listed.json"
    listed.write_text("[1, 2]")
    cases = [
        (("jobs", "submit", str(bad)), "422 Invalid input: student"),
        (("jobs", "show", "job_0000000000000000"), "404 Not found: no job job_0000000000000000"),
        (("jobs", "report", "job_0000000000000000"), "404 Not found"),
        (("jobs", "submit", str(tmp_path / "missing.yaml")), "missing.yaml"),
        (("jobs", "submit", str(broken)), "broken.yaml: not valid YAML"),
        (("jobs", "submit", str(listed)), "a JobSpec is a mapping"),
        (("jobs", "list", "--key", "wrong"), "401 Unauthorized: missing or unknown API key"),
        (("jobs", "list", "--url", f"http://127.0.0.1:{free_port()}"), "cannot reach http://127.0.0.1:"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 1, (argv, out, err)
        assert err.startswith("distillery: error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and out == "", (argv, out, err)
    monkeypatch.delenv("DISTILLERY_API_KEY")
    code, _, err = run(capsys, "jobs", "list")
    assert code == 1 and "401" in err
    code, _, err = run(capsys, "jobs", "list", "--status", "sleeping")  # a usage error is typer's: status 2
    assert code == 2 and "sleeping" in err
    assert httpx.get(f"{up.base}/readyz", timeout=10).status_code == 200  # nothing broke the service


def test_the_client_commands_are_listed_in_the_help() -> None:
    help_text = cli.build_parser().format_help()
    assert "jobs" in help_text and "artifacts" in help_text
