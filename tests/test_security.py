"""The security checklist of SECURITY.md as tests: configs, code and shipped artifacts, without a server.

tests/scripts/test_serve_production.py checks a running production server (keys, sockets, refusals);
tests/config/test_nginx_proxy.py checks the TLS proxy end to end. This file checks what can be read
statically: the properties files, the handler settings, every Python file of the repository (AST, so an
alias or a keyword cannot hide a call) and the members of a freshly built .mar.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import re
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import yaml

from handler.forensics import PreprocessConfig
from handler.metadata import EXPLAIN_FILENAME, METADATA_FILENAME
from handler.settings import HandlerSettings
from scripts.package_model import PackageConfig, package_model
from scripts.serve import CONFIGS, HTTP_LISTENERS, Ports, ServeConfig, read_properties, runtime_properties
from tests.nginx_proxy import RENDER_SCRIPT, render_site

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIG = REPO_ROOT / "config" / "model-config.yaml"
NGINX_SITE = REPO_ROOT / "config" / "nginx" / "deepfake.conf"
LISTENERS = (*HTTP_LISTENERS, "grpc_inference_address", "grpc_management_address")
# The one API meant for clients, over REST and gRPC; production.properties binds it to every interface on
# purpose (a load balancer or other pods reach it) and guards it with the inference key. Every other listener
# must be loopback. SECURITY.md says so too.
PUBLIC_LISTENERS = {"inference_address", "grpc_inference_address"}
MiB = 2**20


def listener_host(value: str) -> str:
    """The host of an http(s)://host:port address, or a bare gRPC host."""
    return urlsplit(value).hostname if "://" in value else value.strip("[]")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for 0.0.0.0, :: and every other address or name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def production() -> dict[str, str]:
    return read_properties(CONFIGS["production"])


# --- production and development configs ---------------------------------------------------------------------------

def test_token_authorization_is_on_and_keys_expire(production):
    assert production.get("disable_token_authorization", "false").lower() != "true"
    assert 1 <= int(production.get("token_expiration_min", "60")) <= 24 * 60
    # TS_* environment variables would override this file silently; they must stay ignored.
    assert production.get("enable_envvars_config", "false").lower() != "true"
    assert production.get("cors_allowed_origin", "") != "*"


def test_operations_listen_on_loopback_and_only_inference_may_be_public(production):
    missing = [key for key in LISTENERS if key not in production]
    assert missing == [], f"listeners left to TorchServe's defaults (gRPC binds every interface): {missing}"
    hosts = {key: listener_host(production[key]) for key in LISTENERS}
    for key in ("management_address", "metrics_address", "grpc_management_address"):
        assert is_loopback(hosts[key]), f"{key}={production[key]} must be loopback"
    public = {key for key, host in hosts.items() if not is_loopback(host)}
    assert public <= PUBLIC_LISTENERS


def test_runtime_config_keeps_the_hosts(production, tmp_path):
    values = runtime_properties(ServeConfig(properties=CONFIGS["production"], model_store=tmp_path, ports=Ports()))
    for key in LISTENERS:
        assert listener_host(values[key]) == listener_host(production[key]), key


def test_development_config_binds_only_loopback():
    development = read_properties(CONFIGS["dev"])
    for key in LISTENERS:
        assert key in development and is_loopback(listener_host(development[key])), key


def test_model_api_is_off_and_nothing_is_installed_at_load(production):
    assert production["enable_model_api"] == "false"
    assert production["install_py_dep_per_model"] == "false"


def allowed_url_cases(store: Path) -> tuple[list[str], list[str]]:
    """(URLs that must be allowed, URLs that must be refused) for a model store."""
    allowed = [f"file://{store}/deepfake.mar", f"file://{store}/deepfake-v2.mar", f"file://{store}/deepfake_batch6.mar"]
    refused = [
        "http://example.com/deepfake.mar", "https://example.com/deepfake.mar", f"https://example.com{store}/x.mar",
        "s3://bucket/deepfake.mar", "ftp://example.com/deepfake.mar", "file:///etc/passwd", "file:///tmp/evil.mar",
        f"file://{store}/../evil.mar", f"file://{store}/sub/evil.mar", f"file://{store}x/evil.mar",
        f"file://{store.parent}/evil.mar", f"file://{store}/deepfake.mar.zip", f"file://{store}/deepfake.mar/x.mar",
        f"file://{store}/handler.py", f"file://{store}/.mar/../../evil.mar",
        # Java decodes %-escapes in file: URLs: with [^/]+ these registered /<store's parent>/evil.mar (measured on
        # TorchServe 0.12), and TorchServe's own ".." check does not see an escaped one.
        f"file://{store}/%2e%2e%2fevil.mar", f"file://{store}/%2E%2E%2Fevil.mar", f"file://{store}/..%2fevil.mar",
        f"file://{store}/x%00.mar", f"file://{store}/x\n.mar",
    ]
    return allowed, refused


@pytest.mark.parametrize("name", ["production", "dev"])
def test_allowed_urls_match_only_archives_of_the_model_store(name, tmp_path):
    # A store path with regex metacharacters: serve.py must put it in literally.
    store = tmp_path / "model.store+v1"
    values = runtime_properties(ServeConfig(properties=CONFIGS[name], model_store=store, ports=Ports()))
    # TorchServe matches each allowed_urls pattern against the whole URL, ignoring case: refusals must hold so.
    patterns = [re.compile(pattern, re.IGNORECASE) for pattern in values["allowed_urls"].split(",")]
    allowed, refused = allowed_url_cases(store.resolve())
    for url in allowed:
        assert any(pattern.fullmatch(url) for pattern in patterns), url
    wrongly_allowed = [url for url in refused if any(pattern.fullmatch(url) for pattern in patterns)]
    assert wrongly_allowed == [], f"{CONFIGS[name].name}: allowed_urls={values['allowed_urls']}"


def test_request_limits_are_set_and_bounded(production):
    assert 1 * MiB <= int(production["max_request_size"]) <= 64 * MiB
    assert 64 * 1024 <= int(production["max_response_size"]) <= 64 * MiB
    assert 1 <= int(production["job_queue_size"]) <= 10_000
    assert 1 <= int(production["default_response_timeout"]) <= 600


def heap_bytes(vmargs: str) -> int:
    """The -Xmx of JVM options in bytes (the last one wins, as in Java)."""
    sizes = re.findall(r"(?:^|\s)-Xmx(\d+)([kKmMgG]?)(?=\s|$)", vmargs)
    assert sizes, f"no -Xmx in vmargs={vmargs!r}: the JVM would take a quarter of the RAM"
    number, unit = sizes[-1]
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit.lower()]


def test_java_heap_is_capped(production):
    assert 256 * MiB <= heap_bytes(production["vmargs"]) <= 32 * 2**30
    assert "-XX:+ExitOnOutOfMemoryError" in production["vmargs"].split()
    assert heap_bytes("-Xms1g -Xmx512m") == 512 * MiB and heap_bytes("-Xmx2G -Xmx3g") == 3 * 2**30


def test_handler_limits_are_set_bounded_and_fit_the_request_limit():
    model_config = yaml.safe_load(MODEL_CONFIG.read_text())
    settings = HandlerSettings.from_model_config(model_config)  # what a worker would accept
    assert settings.max_image_pixels is not None and 1 <= settings.max_image_pixels <= 100_000_000
    assert 1 <= PreprocessConfig.max_image_pixels <= 100_000_000  # what an export without the setting gets
    upload = model_config["handler"].get("max_upload_bytes")
    if upload is not None:
        assert 1 <= upload <= 64 * MiB
        for name in ("production", "dev"):
            request_limit = int(read_properties(CONFIGS[name])["max_request_size"])
            # A base64 JSON body of a file at the handler's limit must still pass the frontend (4/3 + the JSON).
            assert upload * 4 / 3 < request_limit, f"{CONFIGS[name].name}: max_request_size {request_limit}"


# --- the TLS proxy's site --------------------------------------------------------------------------------------------

def locations(site: str) -> list[tuple[str, str]]:
    """(location header, body) of every `location ... { }` block of an nginx site, nested braces included."""
    blocks = []
    for match in re.finditer(r"^\s*location\s+([^{]+)\{", site, flags=re.MULTILINE):
        depth, index = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(site[index], 0)
            index += 1
        blocks.append((match[1].strip(), site[match.end():index - 1]))
    return blocks


def test_proxy_site_forwards_only_predictions_and_ping():
    site = NGINX_SITE.read_text()
    forwarding = [header for header, body in locations(site) if "proxy_pass" in body]
    assert forwarding == ["= /predictions/deepfake", r"~ ^/predictions/deepfake/[A-Za-z0-9._-]+$", "= /ping"]
    assert site.count("proxy_pass") == 3  # none outside those locations
    directives = {line.split("#")[0].strip() for line in site.splitlines()}
    assert {"ssl_protocols TLSv1.2 TLSv1.3;", "server_tokens off;"} <= directives


def test_proxy_body_limit_is_the_frontends(production):
    # render.sh with the shipped values alone: the limit comes from production.properties, nothing else.
    assert RENDER_SCRIPT.is_file()
    rendered = render_site({})
    [limit] = re.findall(r"^\s*client_max_body_size (\d+);$", rendered, flags=re.MULTILINE)
    assert int(limit) == int(production["max_request_size"])
    assert re.findall(r"\$\{DEEPFAKE_[A-Z_]+\}", rendered) == []


# --- code: unsafe deserialisation and shells --------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One unsafe construct: where, inside which function, and which rule it breaks."""

    path: str
    line: int
    function: str
    rule: str


TORCH_LOAD = "torch.load without weights_only=True"
SHELL = "shell=True (or os.system/os.popen)"
PICKLE_IMPORT = "pickle-family import in handler/"
NUMPY_PICKLE = "numpy.load with allow_pickle in handler/"
YAML_UNSAFE = "yaml.load without SafeLoader in handler/"
DYNAMIC_CODE = "eval/exec/compile in handler/"

# Modules whose loaders run code from the data they read (pickle and its wrappers).
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
UNSAFE_YAML_CALLS = {"yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"}
SHELL_CALLS = {"os.system", "os.popen"}
DYNAMIC_BUILTINS = {"eval", "exec", "compile", "__import__"}
# Deliberate exceptions, each with the reason it is safe: (path, enclosing function, rule) → why.
ALLOWED = {
    ("tests/training/test_inspect.py", "test_the_code_on_load_payload_is_live", TORCH_LOAD):
        "the witness that the payload really runs under the full unpickler; it loads a file the test wrote itself",
}


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


class UnsafeCallFinder(ast.NodeVisitor):
    """Collects Findings in one module, resolving `import x as y` and `from x import f as g` aliases."""

    def __init__(self, path: str, handler_rules: bool) -> None:
        self.path = path
        self.handler_rules = handler_rules
        self.aliases: dict[str, str] = {}  # local name → dotted name it stands for
        self.functions: list[str] = []
        self.findings: list[Finding] = []

    def report(self, node: ast.AST, rule: str) -> None:
        function = self.functions[-1] if self.functions else "<module>"
        self.findings.append(Finding(self.path, node.lineno, function, rule))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            if alias.asname:  # import numpy as np: np is numpy
                self.aliases[alias.asname] = alias.name
            else:  # import torch.serialization: binds torch
                self.aliases[top] = top
            if self.handler_rules and alias.name.split(".")[0] in PICKLE_MODULES:
                self.report(node, PICKLE_IMPORT)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        if self.handler_rules and module.split(".")[0] in PICKLE_MODULES:
            self.report(node, PICKLE_IMPORT)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def qualified(self, node: ast.expr) -> str | None:
        """The dotted name an expression stands for (`np.load` → `numpy.load`), or None."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualified(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualified(node.func) or ""
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}  # **kwargs → None key
        if name in TORCH_LOADS and not _is_true(keywords.get("weights_only", ast.Constant(None))):
            self.report(node, TORCH_LOAD)
        shell = keywords.get("shell")
        if name in SHELL_CALLS or (shell is not None and not (isinstance(shell, ast.Constant) and not shell.value)):
            self.report(node, SHELL)
        if self.handler_rules:
            self._handler_call(node, name, keywords)
        self.generic_visit(node)

    def _handler_call(self, node: ast.Call, name: str, keywords: dict[str | None, ast.expr]) -> None:
        allow_pickle = keywords.get("allow_pickle")
        if name == "numpy.load" and (None in keywords or (
                allow_pickle is not None and not (isinstance(allow_pickle, ast.Constant) and not allow_pickle.value))):
            self.report(node, NUMPY_PICKLE)
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or self.qualified(loader) not in SAFE_YAML_LOADERS:
                self.report(node, YAML_UNSAFE)
        if name in UNSAFE_YAML_CALLS:
            self.report(node, YAML_UNSAFE)
        if isinstance(node.func, ast.Name) and node.func.id in DYNAMIC_BUILTINS and node.func.id not in self.aliases:
            self.report(node, DYNAMIC_CODE)


def unsafe_calls(source: str, path: str) -> list[Finding]:
    """Every Finding in one module's source; handler/ (the code that sees user input) gets the stricter rules."""
    finder = UnsafeCallFinder(path, handler_rules=path.startswith("handler/"))
    finder.visit(ast.parse(source, filename=path))
    return finder.findings


def repository_python_files(root: Path = REPO_ROOT) -> list[str]:
    """Tracked and new (not ignored) .py files, relative to the root: the repository's code, not .venv or build/."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split()
    return sorted({name for name in listed if (root / name).is_file()})


def scan(root: Path, paths: list[str]) -> list[Finding]:
    return [finding for path in paths for finding in unsafe_calls((root / path).read_text(), path)]


def test_the_repository_has_no_unsafe_loads_or_shells():
    paths = repository_python_files()
    assert len(paths) > 50 and "handler/deepfake_handler.py" in paths and "tests/test_security.py" in paths
    findings = scan(REPO_ROOT, paths)
    unexpected = [finding for finding in findings if (finding.path, finding.function, finding.rule) not in ALLOWED]
    assert unexpected == []
    stale = set(ALLOWED) - {(finding.path, finding.function, finding.rule) for finding in findings}
    assert stale == set(), "allowed exceptions that no longer exist: remove them from ALLOWED"


@pytest.mark.parametrize(("source", "rule"), [
    ("import torch\ntorch.load('m.pt')", TORCH_LOAD),
    ("import torch\ntorch.load('m.pt', weights_only=False)", TORCH_LOAD),
    ("import torch\ntorch.load('m.pt', **options)", TORCH_LOAD),
    ("import torch as t\nt.load('m.pt', map_location='cpu')", TORCH_LOAD),
    ("from torch import load\nload('m.pt')", TORCH_LOAD),
    ("from torch import load as restore\nrestore('m.pt')", TORCH_LOAD),
    ("import torch.serialization\ntorch.serialization.load('m.pt')", TORCH_LOAD),
    ("import subprocess\nsubprocess.run('ls', shell=True)", SHELL),
    ("from subprocess import Popen as P\nP(command, shell=use_shell)", SHELL),
    ("import os\nos.system('ls')", SHELL),
    ("import pickle", PICKLE_IMPORT),
    ("import joblib as jl", PICKLE_IMPORT),
    ("from dill import loads", PICKLE_IMPORT),
    ("import numpy as np\nnp.load('a.npy', allow_pickle=True)", NUMPY_PICKLE),
    ("import yaml\nyaml.load(text)", YAML_UNSAFE),
    ("import yaml\nyaml.load(text, Loader=yaml.FullLoader)", YAML_UNSAFE),
    ("import yaml\nyaml.unsafe_load(text)", YAML_UNSAFE),
    ("eval(expression)", DYNAMIC_CODE),
    ("def f(code):\n    exec(code)", DYNAMIC_CODE),
])
def test_the_checker_finds_a_planted_violation(source, rule):
    [finding] = unsafe_calls(source, "handler/planted.py")
    assert finding.rule == rule and finding.path == "handler/planted.py"


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load('m.pt', map_location='cpu', weights_only=True)",
    "import torch\ntorch.jit.load('model.torchscript.pt')",  # TorchScript: its own restricted unpickler
    "import subprocess\nsubprocess.run(['ls'], shell=False, check=True)",
    "import numpy as np\nnp.load('a.npy')",
    "import numpy as np\nnp.load('a.npy', allow_pickle=False)",
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "from yaml import CSafeLoader, load\nload(text, CSafeLoader)",
    "model.eval()",  # a method, not the builtin
    "import json\njson.loads(text)",
])
def test_the_checker_passes_safe_code(source):
    assert unsafe_calls(source, "handler/safe.py") == []


def test_handler_rules_apply_to_handler_only_and_the_scan_reads_files(tmp_path):
    (tmp_path / "handler").mkdir()
    (tmp_path / "training").mkdir()
    (tmp_path / "handler" / "bad.py").write_text("import pickle\n\ndef read(data):\n    return pickle.loads(data)\n")
    (tmp_path / "training" / "ok.py").write_text("import pickle\n")
    shell = "import subprocess\n\ndef go():\n    subprocess.call('x', shell=1)\n"
    (tmp_path / "training" / "shell.py").write_text(shell)
    findings = scan(tmp_path, ["handler/bad.py", "training/ok.py", "training/shell.py"])
    assert findings == [Finding("handler/bad.py", 1, "<module>", PICKLE_IMPORT),
                        Finding("training/shell.py", 4, "go", SHELL)]


# --- shipped artifacts: no pickle beyond TorchScript's own ---------------------------------------------------------

# A .mar is code: TorchServe imports its handler .py files in the worker, so whoever can place an archive in
# the model store runs Python on the host (SECURITY.md). What must not be in it is a *data* file that executes
# code when read: a pickle (.pkl, .joblib, a torch.save checkpoint). The TorchScript model is a zip whose
# data.pkl/constants.pkl are read by TorchScript's own unpickler, which rebuilds tensors and TorchScript
# classes only and cannot call arbitrary Python callables; so it is allowed, and nothing else binary is.
ARCHIVE_TEXT_SUFFIXES = (".py", ".json", ".yaml")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".npy", ".npz", ".pt", ".pth", ".ckpt", ".bin")
PICKLE_MAGIC = b"\x80"  # protocol 2+ pickles start with PROTO


@pytest.fixture(scope="module")
def shipped_archive(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deepfake.mar built by scripts/package_model.py with the shipped config/model-config.yaml."""
    return package_model(PackageConfig(export_dir=tiny_export, model_store=tmp_path_factory.mktemp("security_store")))


def test_archive_holds_only_torchscript_code_and_text(shipped_archive):
    with zipfile.ZipFile(shipped_archive) as archive:
        names = [name for name in archive.namelist() if not name.endswith("/")]
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        serialized = manifest["model"]["serializedFile"]
        # The Grad-CAM twin (training.export) is the only other binary: TorchScript too, checked below.
        others = [name for name in names if name not in (serialized, EXPLAIN_FILENAME)]
        assert serialized == "model.torchscript.pt" and serialized in names and EXPLAIN_FILENAME in names
        assert [name for name in others if not name.endswith(ARCHIVE_TEXT_SUFFIXES)] == []
        assert [name for name in others if name.endswith(PICKLE_SUFFIXES)] == []
        for name in others:
            data = archive.read(name)
            assert not data.startswith(PICKLE_MAGIC), name
            if name.endswith(".json"):
                json.loads(data)
            elif name.endswith(".yaml"):
                yaml.safe_load(data)
            else:
                ast.parse(data, filename=name)  # Python source, not bytecode or a renamed binary
        assert {"calibration.json", METADATA_FILENAME, "model-config.yaml"} <= set(others)
        calibration = json.loads(archive.read("calibration.json"))
        metadata = json.loads(archive.read(METADATA_FILENAME))
    assert isinstance(calibration, dict) and calibration
    assert 1 <= metadata["preprocessing"]["max_image_pixels"] <= 100_000_000


@pytest.mark.parametrize("model_name", ["model.torchscript.pt", EXPLAIN_FILENAME])
def test_model_file_is_torchscript_and_the_checkpoint_loads_weights_only(shipped_archive, tiny_export, tmp_path,
                                                                         model_name):
    with zipfile.ZipFile(shipped_archive) as archive:
        model_bytes = archive.read(model_name)
    model_file = tmp_path / model_name
    model_file.write_bytes(model_bytes)
    with zipfile.ZipFile(model_file) as torchscript:
        members = torchscript.namelist()
    # A TorchScript archive carries its code as TorchScript source (code/), unlike an eager torch.save pickle.
    assert any("/code/" in name for name in members) and any(name.endswith("/constants.pkl") for name in members)
    model = torch.jit.load(str(model_file), map_location="cpu")
    assert isinstance(model, torch.jit.ScriptModule)
    checkpoint = torch.load(tiny_export.parent / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"] and all(isinstance(value, torch.Tensor) for value in
                                            checkpoint["state_dict"].values())
    exported = [path.name for path in tiny_export.iterdir() if path.suffix in PICKLE_SUFFIXES]
    assert sorted(exported) == sorted(["model.torchscript.pt", EXPLAIN_FILENAME])
