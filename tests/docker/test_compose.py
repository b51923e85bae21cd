"""docker/compose.yaml, docker/compose.gpu.yaml and docker/.env.example, checked without a Docker engine.

docker-compose 1.29.2 (Debian) validates and resolves the files offline: `config -q` is the schema check and
`config` prints the merged, interpolated model the checks below read. What a file says is compared with the
files its containers actually read: the Dockerfile's command and healthcheck, config/container.properties'
listeners, docker/prometheus/prometheus.yml's rule_files and scrape target, Grafana's provisioning.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from scripts.serve import ServeConfig, read_properties

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
GPU_OVERRIDE = DOCKER / "compose.gpu.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
CONTAINER_PROPERTIES = REPO / "config" / "container.properties"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
RULES = REPO / "config" / "prometheus" / "deepfake-rules.yml"
GRAFANA_PROVISIONING = DOCKER / "grafana" / "provisioning"
GRAFANA_DASHBOARDS = DOCKER / "grafana" / "dashboards"
# Grafana reads provisioning from here unless GF_PATHS_PROVISIONING says otherwise.
GRAFANA_DEFAULT_PROVISIONING = "/etc/grafana/provisioning"
# The operator's password is never in a file of the repository: tests pass one in the environment.
TEST_PASSWORD = "test-only-password"
# Docker's HEALTHCHECK defaults, for options a Dockerfile leaves out.
HEALTHCHECK_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "start_period": 0.0, "retries": 3}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)")

CPU = (COMPOSE,)
CPU_GPU = (COMPOSE, GPU_OVERRIDE)


def run_compose(files: tuple[Path, ...], *args: str, env: dict[str, str] | None = None,
                password: str | None = TEST_PASSWORD) -> subprocess.CompletedProcess[str]:
    """docker-compose with .env.example as its env file and nothing of this shell's environment but PATH.

    A docker/.env on the developer's machine is not read (--env-file replaces it), so the result depends on the
    repository alone.
    """
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    if password is not None:
        environment["GRAFANA_ADMIN_PASSWORD"] = password
    command = ["docker-compose", "--env-file", str(ENV_EXAMPLE)]
    for file in files:
        command += ["-f", str(file)]
    return subprocess.run(command + list(args), cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=60, check=False)


def resolved(files: tuple[Path, ...], env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated model `docker-compose config` prints (relative paths made absolute)."""
    result = run_compose(files, "config", env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return resolved(CPU)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return resolved(CPU_GPU)


@dataclass(frozen=True)
class Mount:
    """One entry of a service's `volumes:` as docker-compose resolves it ("source:target[:mode]")."""

    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")

    @classmethod
    def parse(cls, entry: str | dict[str, Any]) -> Mount:
        if isinstance(entry, dict):
            return cls(entry["source"], entry["target"], bool(entry.get("read_only")))
        parts = entry.split(":")
        return cls(parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(","))


@dataclass(frozen=True)
class Published:
    """One entry of a service's `ports:` as docker-compose resolves it ("host_ip:published:target/proto")."""

    host_ip: str
    published: int
    target: int

    @classmethod
    def parse(cls, entry: str) -> Published:
        *host, published, target = entry.split(":")
        return cls(":".join(host), int(published), int(target.split("/")[0]))


def mounts(service: dict[str, Any]) -> list[Mount]:
    return [Mount.parse(entry) for entry in service.get("volumes", [])]


def published(service: dict[str, Any]) -> list[Published]:
    return [Published.parse(entry) for entry in service.get("ports", [])]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].rstrip("/"))


def container_ports() -> dict[str, int]:
    """TorchServe's five listeners inside the container, from the config the image starts with."""
    values = read_properties(CONTAINER_PROPERTIES)
    return {"inference": port_of(values["inference_address"]), "management": port_of(values["management_address"]),
            "metrics": port_of(values["metrics_address"]), "grpc_inference": int(values["grpc_inference_port"]),
            "grpc_management": int(values["grpc_management_port"])}


def seconds(duration: str | int | float) -> float:
    """A Docker/Compose duration ("1m30s", "120s", "2m", "500ms") in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- Dockerfile reading ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """One build stage: its name, what it is FROM, and its instructions as (KEYWORD, arguments)."""

    name: str
    base: str
    instructions: tuple[tuple[str, str], ...]


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    """The stages of a Dockerfile by name (unnamed ones by index), continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue  # Docker drops comment and empty lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        if pending + stripped:
            logical.append(pending + stripped)
        pending = ""
    stages: dict[str, Stage] = {}
    current: tuple[str, str, list[tuple[str, str]]] | None = None
    for instruction in logical:
        keyword, _, arguments = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            if current:
                stages[current[0]] = Stage(current[0], current[1], tuple(current[2]))
            words = [word for word in arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            current = (name, words[0], [])
        elif current is not None:
            current[2].append((keyword, arguments.strip()))
    if current:
        stages[current[0]] = Stage(current[0], current[1], tuple(current[2]))
    return stages


def last_instruction(stages: dict[str, Stage], target: str, keyword: str) -> str:
    """The arguments of the last `keyword` in `target`, or inherited from the stage it is FROM."""
    stage = stages[target]
    found = [arguments for name, arguments in stage.instructions if name == keyword]
    if found:
        return found[-1]
    assert stage.base in stages, f"no {keyword} in stage {target} or the stages it builds on"
    return last_instruction(stages, stage.base, keyword)


def exec_form(arguments: str) -> list[str]:
    """A CMD/HEALTHCHECK command as a list: JSON exec form as is, shell form as Docker runs it."""
    if arguments.startswith("["):
        return json.loads(arguments)
    return ["/bin/sh", "-c", arguments]


def dockerfile_healthcheck(arguments: str) -> tuple[list[str], dict[str, float]]:
    """(command, options in seconds/count with Docker's defaults) of a HEALTHCHECK instruction."""
    options = dict(HEALTHCHECK_DEFAULTS)
    words = shlex.split(arguments.split("CMD", 1)[0])
    for word in words:
        key, _, value = word.removeprefix("--").partition("=")
        key = key.replace("-", "_")
        options[key] = int(value) if key == "retries" else seconds(value)
    command = arguments.split("CMD", 1)[1].strip()
    return exec_form(command), options


def compose_healthcheck(service: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    check = service["healthcheck"]
    test = check["test"]
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    options = {key: (int(check[key]) if key == "retries" else seconds(check[key]))
               for key in HEALTHCHECK_DEFAULTS if key in check}
    return command, {**HEALTHCHECK_DEFAULTS, **options}


# --- validation --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("files", [CPU, CPU_GPU], ids=["cpu", "cpu+gpu"])
def test_the_compose_files_validate_with_the_example_env(files: tuple[Path, ...]) -> None:
    result = run_compose(files, "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("planted", "named"), [
    ("services:\n  torchserve:\n    bogus_key: 1\n", "bogus_key"),
    ("services:\n  torchserve:\n    deploy:\n      resources:\n        limit:\n          cpus: '1'\n", "limit"),
    ("services:\n  grafana:\n    ports: 3000\n", "ports"),
], ids=["unknown-service-key", "misspelt-nested-key", "wrong-type"])
def test_a_planted_mistake_fails_validation(tmp_path: Path, planted: str, named: str) -> None:
    override = tmp_path / "planted.yaml"
    override.write_text(planted)
    result = run_compose((COMPOSE, override), "config", "-q")
    assert result.returncode != 0
    assert named in result.stderr


def test_a_bad_key_planted_in_compose_yaml_itself_fails_validation(tmp_path: Path) -> None:
    copy = tmp_path / "docker" / "compose.yaml"
    copy.parent.mkdir()
    text = COMPOSE.read_text()
    copy.write_text(text)
    assert run_compose((copy,), "config", "-q").returncode == 0, "the unchanged copy must validate"
    copy.write_text(text.replace("    read_only: true\n", "    read_only: true\n    bogus_key: 1\n", 1))
    result = run_compose((copy,), "config", "-q")
    assert result.returncode != 0
    assert "bogus_key" in result.stderr


def test_no_version_or_name_key_and_the_project_name_comes_from_the_env_file() -> None:
    for file in (COMPOSE, GPU_OVERRIDE):
        document = yaml.safe_load(file.read_text())
        assert "version" not in document and "name" not in document, file
    example = env_example()
    assert example["COMPOSE_PROJECT_NAME"] == "deepfake"


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_the_env_example_sets_every_variable_the_compose_files_use_and_no_other() -> None:
    used = {match["name"] for file in (COMPOSE, GPU_OVERRIDE) for match in VARIABLE.finditer(file.read_text())}
    assert used == set(env_example()) - {"COMPOSE_PROJECT_NAME"}


# --- Grafana's password ------------------------------------------------------------------------------------------

def test_grafana_will_not_start_without_an_admin_password() -> None:
    assert env_example()["GRAFANA_ADMIN_PASSWORD"] == "", ".env.example must not carry a usable password"
    for password in (None, ""):
        result = run_compose(CPU, "config", "-q", password=password)
        assert result.returncode != 0
        assert "set GRAFANA_ADMIN_PASSWORD in docker/.env" in result.stderr


def test_grafana_gets_the_password_given_and_no_anonymous_access(cpu: dict[str, Any]) -> None:
    environment = cpu["services"]["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == TEST_PASSWORD
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"


# --- what is published -------------------------------------------------------------------------------------------

def test_by_default_every_published_port_is_on_loopback(cpu: dict[str, Any]) -> None:
    for name, service in cpu["services"].items():
        for port in published(service):
            assert port.host_ip == "127.0.0.1", f"{name} publishes {port} beyond this host"


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.0.2.10"])
def test_widening_the_bind_address_widens_inference_and_grpc_only(bind: str) -> None:
    ports = container_ports()
    model = resolved(CPU, env={"DEEPFAKE_BIND": bind})
    beyond_loopback = {(name, port.target, port.host_ip) for name, service in model["services"].items()
                       for port in published(service) if port.host_ip != "127.0.0.1"}
    assert beyond_loopback == {("torchserve", ports["inference"], bind), ("torchserve", ports["grpc_inference"], bind)}
    torchserve = {port.target: port.host_ip for port in published(model["services"]["torchserve"])}
    assert torchserve[ports["management"]] == "127.0.0.1"
    assert torchserve[ports["grpc_management"]] == "127.0.0.1"


def test_metrics_is_not_published_and_prometheus_scrapes_it_on_the_compose_network(cpu: dict[str, Any]) -> None:
    metrics = container_ports()["metrics"]
    for service in cpu["services"].values():
        assert metrics not in {port.target for port in published(service)}
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [target for job in scrape["scrape_configs"] for group in job.get("static_configs", [])
               for target in group["targets"]]
    assert f"torchserve:{metrics}" in targets
    for target in targets:  # a compose service, or Prometheus itself
        assert target.split(":")[0] in {*cpu["services"], "localhost"}, f"scrape target {target} is not a service"


# --- mounts and the files behind them ----------------------------------------------------------------------------

def test_every_bind_mounted_host_path_is_in_the_repository(gpu: dict[str, Any]) -> None:
    binds = [(name, mount) for name, service in gpu["services"].items() for mount in mounts(service) if mount.is_bind]
    assert binds
    for name, mount in binds:
        source = Path(mount.source)
        assert source.is_relative_to(REPO), f"{name} mounts {source}, outside the repository"
        assert source.exists(), f"{name} mounts {source}, which does not exist"
        assert mount.read_only, f"{name} mounts {source} writable"


def test_torchserve_serves_the_model_store_make_demo_writes(cpu: dict[str, Any]) -> None:
    service = cpu["services"]["torchserve"]
    command = service["command"]
    store = command[command.index("--model-store") + 1]
    mount = next(mount for mount in mounts(service) if mount.target == store)
    assert Path(mount.source) == ServeConfig().model_store == REPO / "model_store"
    assert mount.read_only
    # model_store/ is a build output: only its .gitkeep is in version control.
    assert (REPO / "model_store" / ".gitkeep").is_file()


def test_the_root_filesystem_is_read_only_and_only_the_run_dir_and_tmp_are_writable(cpu: dict[str, Any]) -> None:
    service = cpu["services"]["torchserve"]
    assert service["read_only"] is True
    run_dir = service["command"][service["command"].index("--run-dir") + 1]
    writable = {mount.target for mount in mounts(service) if not mount.read_only}
    assert writable == {run_dir}
    named = next(mount for mount in mounts(service) if mount.target == run_dir)
    assert named.source in cpu["volumes"], "the run dir must be a named volume (keys and logs survive a restart)"
    assert [entry.split(":")[0] for entry in service["tmpfs"]] == ["/tmp"]


def test_prometheus_finds_the_rules_file_where_it_is_mounted(cpu: dict[str, Any]) -> None:
    service = cpu["services"]["prometheus"]
    config_path = next(arg.split("=", 1)[1] for arg in service["command"] if arg.startswith("--config.file="))
    by_target = {mount.target: mount for mount in mounts(service)}
    assert Path(by_target[config_path].source) == PROMETHEUS_CONFIG
    rule_files = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    assert rule_files
    for pattern in rule_files:
        absolute = str(PurePosixPath(config_path).parent / pattern)
        matched = [mount for target, mount in by_target.items() if fnmatch.fnmatch(target, absolute)]
        assert matched, f"rule_files entry {pattern} ({absolute}) matches no mounted file"
        assert {Path(mount.source) for mount in matched} == {RULES}


def test_prometheus_keeps_its_data_on_a_volume_for_a_bounded_time(cpu: dict[str, Any]) -> None:
    service = cpu["services"]["prometheus"]
    storage = next(arg.split("=", 1)[1] for arg in service["command"] if arg.startswith("--storage.tsdb.path="))
    assert any(mount.target == storage and mount.source in cpu["volumes"] for mount in mounts(service))
    retention = next(arg.split("=", 1)[1] for arg in service["command"]
                     if arg.startswith("--storage.tsdb.retention.time="))
    assert re.fullmatch(r"([1-9]\d*(ms|s|m|h|d|w|y))+", retention), f"retention {retention!r} is not a duration"


def test_grafana_reads_the_provisioning_and_the_dashboard_where_they_are_mounted(cpu: dict[str, Any]) -> None:
    service = cpu["services"]["grafana"]
    provisioning = service["environment"].get("GF_PATHS_PROVISIONING", GRAFANA_DEFAULT_PROVISIONING)
    by_target = {mount.target: mount for mount in mounts(service)}
    assert Path(by_target[provisioning].source) == GRAFANA_PROVISIONING
    providers = [provider for file in sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.y*ml"))
                 for provider in yaml.safe_load(file.read_text())["providers"]]
    assert providers
    for provider in providers:
        path = provider["options"]["path"]
        assert path in by_target, f"dashboard provider {provider['name']} reads {path}, which is not mounted"
        source = Path(by_target[path].source)
        assert source == GRAFANA_DASHBOARDS
        assert (source / "deepfake-detector.json").is_file()


def test_grafanas_datasource_is_the_prometheus_service(cpu: dict[str, Any]) -> None:
    datasources = [source for file in sorted((GRAFANA_PROVISIONING / "datasources").glob("*.y*ml"))
                   for source in yaml.safe_load(file.read_text())["datasources"]]
    prometheus = next(source for source in datasources if source["type"] == "prometheus")
    assert prometheus["uid"] == "prometheus"
    host, port = prometheus["url"].removeprefix("http://").rstrip("/").split(":")
    assert host in cpu["services"]
    listen = [arg for arg in cpu["services"][host]["command"] if arg.startswith("--web.listen-address=")]
    assert int(port) == (port_of(listen[0]) if listen else 9090)


# --- the image's command and healthcheck -------------------------------------------------------------------------

@pytest.mark.parametrize(("files", "dockerfile", "image"), [
    (CPU, DOCKER / "Dockerfile", "deepfake-detector:cpu-runtime"),
    (CPU_GPU, DOCKER / "Dockerfile.gpu", "deepfake-detector:gpu-runtime"),
], ids=["cpu", "gpu"])
def test_torchserve_runs_the_dockerfiles_command_and_healthcheck(files: tuple[Path, ...], dockerfile: Path,
                                                                  image: str) -> None:
    service = resolved(files)["services"]["torchserve"]
    assert service["image"] == image
    build = service["build"]
    assert Path(build["context"]) == REPO
    assert REPO / build["dockerfile"] == dockerfile
    stages = dockerfile_stages(dockerfile)
    assert build["target"] in stages, f"{dockerfile.name} has no stage {build['target']}"
    assert service["command"] == exec_form(last_instruction(stages, build["target"], "CMD"))
    assert compose_healthcheck(service) == dockerfile_healthcheck(
        last_instruction(stages, build["target"], "HEALTHCHECK"))


def test_the_healthcheck_asks_for_readiness_and_the_command_never_restarts_inside(cpu: dict[str, Any]) -> None:
    service = cpu["services"]["torchserve"]
    test = service["healthcheck"]["test"]
    command = service["command"]
    assert test[:5] == ["CMD", "python", "-m", "scripts.healthcheck", "ready"]
    assert test[test.index("--run-dir") + 1] == command[command.index("--run-dir") + 1]
    assert command[command.index("--restart") + 1] == "never"
    assert command[command.index("--properties") + 1] == "config/container.properties"
    assert service["restart"] == "unless-stopped"
    # Something must reap TorchServe's orphaned workers and forward SIGTERM: Compose's init or the image's tini.
    entrypoint = exec_form(last_instruction(dockerfile_stages(DOCKER / "Dockerfile"), "runtime", "ENTRYPOINT"))
    assert service.get("init") is True or Path(entrypoint[0]).name == "tini"
    assert seconds(service["stop_grace_period"]) >= 10


# --- images and resources ----------------------------------------------------------------------------------------

def test_every_image_is_pinned_to_a_release(gpu: dict[str, Any]) -> None:
    images = {name: service["image"] for name, service in gpu["services"].items()}
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
    assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", images["prometheus"])
    assert re.fullmatch(r"grafana/grafana-oss:11\.\d+\.\d+", images["grafana"])


def test_torchserve_has_cpu_and_memory_limits(cpu: dict[str, Any]) -> None:
    limits = cpu["services"]["torchserve"]["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) == float(env_example()["DEEPFAKE_CPUS"])
    assert limits["memory"] == env_example()["DEEPFAKE_MEMORY"]


def test_the_gpu_override_reserves_an_nvidia_gpu(cpu: dict[str, Any], gpu: dict[str, Any]) -> None:
    service = gpu["services"]["torchserve"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "count": devices[0]["count"], "driver": "nvidia"}]
    assert int(devices[0]["count"]) >= 1
    # The override changes the image, not how it runs: limits, ports, mounts and health are the CPU file's.
    cpu_service = cpu["services"]["torchserve"]
    for key in ("command", "healthcheck", "read_only", "tmpfs"):
        assert service[key] == cpu_service[key], key
    for key in ("ports", "volumes"):  # merged lists come out in another order
        assert sorted(service[key]) == sorted(cpu_service[key]), key
    assert service["deploy"]["resources"]["limits"] == cpu_service["deploy"]["resources"]["limits"]
