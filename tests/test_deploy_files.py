"""The deployment files agree with the code: docker-compose.yml runs real `distillery`
subcommands with the settings the design asks for, and the Dockerfile installs the package and
runs the `distillery` script. No Docker is needed: the files are parsed."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.cli import bind_refusal, build_parser

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("api", "worker-gpu", "worker-cpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def command_list(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume or host path -> path in the container"""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[source] = target
    return found


def test_the_services_exist(services: dict[str, Any]) -> None:
    assert {"redis", *APP_SERVICES} <= set(services)


@pytest.mark.parametrize(
    ("name", "subcommand"), [("api", "api"), ("worker-gpu", "worker"), ("worker-cpu", "worker")]
)
def test_commands_are_real_subcommands(services: dict[str, Any], name: str, subcommand: str) -> None:
    # argparse exits (SystemExit) on anything it does not know, which fails the test
    args = build_parser().parse_args(command_list(services[name]))
    assert args.command == subcommand


def test_api_listens_for_the_published_port_with_keys(services: dict[str, Any]) -> None:
    api = services["api"]
    args = build_parser().parse_args(command_list(api))
    assert any(str(port).split(":")[-1] == str(args.port) for port in api["ports"])
    env = environment(api)
    assert "KD_API_KEYS" in env and "${KD_API_KEYS" in env["KD_API_KEYS"]  # from the caller's env
    # with keys, listening on every interface is allowed
    assert args.host == "0.0.0.0" and bind_refusal(args.host, {"KD_API_KEYS": "k:t"}) is None
    check = " ".join(api["healthcheck"]["test"])
    assert "/healthz" in check and str(args.port) in check


def test_workers_take_the_right_queues(services: dict[str, Any]) -> None:
    gpu = build_parser().parse_args(command_list(services["worker-gpu"]))
    cpu = build_parser().parse_args(command_list(services["worker-cpu"]))
    assert gpu.queues == ["gpu"] and gpu.device == "cuda:0"
    assert cpu.queues == ["cpu"] and cpu.device is None


def test_gpu_worker_reserves_an_nvidia_device(services: dict[str, Any]) -> None:
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in services["worker-cpu"]


def test_app_services_share_one_image(services: dict[str, Any]) -> None:
    images = {services[name].get("image") for name in APP_SERVICES}
    builds = {json.dumps(services[name].get("build"), sort_keys=True) for name in APP_SERVICES}
    assert len(images) == 1 and len(builds) == 1
    build = services["api"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).is_file()


def test_redis_persists_and_never_evicts(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = command_list(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "/data" in mounts(redis).values()
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_app_services_use_compose_redis_and_wait_for_it(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        assert environment(services[name])["KD_REDIS_URL"] == "redis://redis:6379/0", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_artifacts_volume_is_shared_at_the_data_dir(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert "artifacts" in compose["volumes"]
    targets = {mounts(services[name]).get("artifacts") for name in APP_SERVICES}
    assert len(targets) == 1 and None not in targets  # every app service, one path
    (target,) = targets
    for name in APP_SERVICES:
        assert environment(services[name])["KD_DATA_DIR"] == target, name


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)  # exec (JSON) form: no shell in between, signals reach the process
    assert isinstance(value, list) and all(isinstance(part, str) for part in value)
    return value


def test_dockerfile_base_user_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert [args for kw, args in instructions if kw == "ENTRYPOINT"] == ['["distillery"]']
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0")
    exposed = [args for kw, args in instructions if kw == "EXPOSE"]
    assert exposed == ["8000"]


def test_entrypoint_is_the_installed_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["distillery"] == "distillery.cli:main"
    entry = [exec_form(args) for kw, args in dockerfile_instructions() if kw == "ENTRYPOINT"][-1]
    assert entry == ["distillery"]


def test_dockerfile_installs_the_package() -> None:
    runs = [args for kw, args in dockerfile_instructions() if kw == "RUN"]
    installs = [run for run in runs if "pip install" in run and "-r " not in run]
    assert installs, runs
    # the project itself (".") is installed, after the whole source has been copied in
    assert any(shlex.split(run)[-1] == "." for run in installs)
    instructions = dockerfile_instructions()
    copy_all = instructions.index(("COPY", ". ."))
    install = next(i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and args in installs)
    assert copy_all < install


def test_default_command_is_a_real_subcommand() -> None:
    cmd = [exec_form(args) for kw, args in dockerfile_instructions() if kw == "CMD"][-1]
    assert build_parser().parse_args(cmd).command == "up"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "data", ".git"} <= ignored
    # what the install needs must not be ignored
    assert not {"pyproject.toml", "distillery", "api", "worker", "kdcore", "README.md"} & ignored


def test_prometheus_profile_scrapes_the_api_metrics(compose: dict[str, Any], services: dict[str, Any]) -> None:
    from api.routes import metrics

    prom = services["prometheus"]
    assert prom["profiles"] == ["metrics"]  # off unless asked for: `docker compose --profile metrics up`
    configs = {c["target"]: compose["configs"][c["source"]] for c in prom["configs"]}
    config_file = ROOT / configs["/etc/prometheus/prometheus.yml"]["file"]
    scrape = yaml.safe_load(config_file.read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "distillery"]
    api_port = build_parser().parse_args(command_list(services["api"])).port
    assert job["static_configs"][0]["targets"] == [f"api:{api_port}"]
    # the path is the API's own route, and the key the API checks is the one Prometheus sends
    assert job["metrics_path"] in {r.path for r in metrics.router.routes}
    key_file = job["authorization"]["credentials_file"]
    assert configs[key_file] == {"environment": "KD_METRICS_KEY"}
    assert environment(services["api"])["KD_METRICS_KEY"].startswith("${KD_METRICS_KEY")
    assert "prometheus-data" in compose["volumes"]


def test_workers_get_the_webhook_allow_list(services: dict[str, Any]) -> None:
    for name in ("worker-gpu", "worker-cpu"):  # the workers deliver webhooks
        assert environment(services[name])["KD_WEBHOOK_ALLOW_HOSTS"].startswith("${KD_WEBHOOK_ALLOW_HOSTS")
