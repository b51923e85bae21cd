"""docs/operations.md, the runbook (and docker/README.md, its index of docker/), against the code and files they name.

A runbook that names a flag the tool no longer has, an alert without its section, or a file that moved
fails its reader at the worst moment. So: every `python -m scripts.X` command it quotes must parse
(subcommand, flags and flag choices as the module's own --help lists them), every alert of
config/prometheus/deepfake-rules.yml must have its section, reachable from the alert's runbook_url, and
every repository path and relative link it names must exist.
"""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNBOOK = REPO / "docs" / "operations.md"
DOCKER_README = REPO / "docker" / "README.md"
DOCS = (RUNBOOK, DOCKER_README)
RULES = REPO / "config" / "prometheus" / "deepfake-rules.yml"
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"python -m (scripts(?:\.\w+)+)(.*)")
# Where a quoted command ends inside a line: a shell operator, a comment, a closing parenthesis.
COMMAND_END = re.compile(r"\s(?:\||&&|;|#)|\)|$")
REPO_PATH = re.compile(r"(?<![\w./-])((?:config|scripts|docker|docs|handler|tests|training|benchmarks)/[\w./-]*[\w/])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*$", re.MULTILINE)
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
# Files the runbook tells the reader to create, with the file of the repository they are made from.
CREATED_BY_THE_READER = {"docker/.env": "docker/.env.example"}


@dataclass(frozen=True)
class QuotedCommand:
    """One `python -m scripts.X ...` the runbook tells people to run."""

    module: str
    arguments: tuple[str, ...]

    def __str__(self) -> str:
        return f"python -m {self.module} {' '.join(self.arguments)}"


def code_lines(text: str) -> list[str]:
    """Lines of fenced blocks, and inline code spans of the prose (a span may wrap onto the next line)."""
    lines: list[str] = []
    for block in FENCE.findall(text):
        lines += block.splitlines()[1:-1]
    prose = FENCE.sub("", text)
    lines += [" ".join(span.split()) for span in INLINE_CODE.findall(prose)]
    return lines


def quoted_commands(text: str) -> list[QuotedCommand]:
    commands = []
    for line in code_lines(text):
        for match in COMMAND.finditer(line):
            rest = match[2]
            rest = rest[:COMMAND_END.search(rest).start()]
            commands.append(QuotedCommand(match[1], tuple(shlex.split(rest))))
    return commands


@functools.cache
def usage(module: str, subcommand: str | None = None) -> str:
    """The usage line of `python -m module [subcommand] --help`, unwrapped: argparse lists every option there."""
    command = [sys.executable, "-m", module] + ([subcommand] if subcommand else []) + ["--help"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(command[1:])} failed: {result.stderr[-500:]}"
    return " ".join(result.stdout.split("\n\n", 1)[0].split())


def value_flags(usage_line: str) -> set[str]:
    """Options that take a value: the usage line shows them as `--flag METAVAR` or `--flag {a,b}`."""
    return set(re.findall(r"(?<![\w-])(--[\w-]+) (?:[A-Z][A-Z0-9_]*|\{[^}]*\})", usage_line))


def flag_choices(usage_line: str, flag: str) -> list[str] | None:
    match = re.search(rf"(?<![\w-]){re.escape(flag)} \{{([\w,.-]+)\}}", usage_line)
    return match[1].split(",") if match else None


def positional_choices(usage_line: str) -> list[str]:
    """The choices of the first positional argument: a {a,b} group that is not an option's value."""
    for match in re.finditer(r"(\S+ )?\{([\w,-]+)\}", usage_line):
        if not (match[1] or "").lstrip("[").startswith("-"):
            return match[2].split(",")
    return []


def check_command(command: QuotedCommand) -> None:
    """Fails unless argparse would accept the command's subcommand, options and option choices."""
    words = list(command.arguments)
    line = usage(command.module)
    if line.endswith(" ..."):  # subcommands (argparse subparsers): the first word picks one, with its own options
        subcommand = next((word for word in words if not word.startswith("-")), None)
        assert subcommand, f"{command}: no subcommand"
        words.remove(subcommand)
        line = usage(command.module, subcommand)
    takes_value = value_flags(line)
    positionals = [word for index, word in enumerate(words)
                   if not word.startswith("-") and not (index and words[index - 1] in takes_value)]
    choices = positional_choices(line)
    if choices:
        assert positionals and positionals[0] in choices, f"{command}: expected one of {choices} first"
    for index, word in enumerate(words):
        if not word.startswith("--"):
            continue
        flag, _, inline_value = word.partition("=")
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", line), f"{command}: {flag} is not an option"
        allowed = flag_choices(line, flag)
        if allowed is not None:
            value = inline_value or (words[index + 1] if index + 1 < len(words) else "")
            assert value in allowed, f"{command}: {flag} {value!r} is not one of {allowed}"


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings (lower case, punctuation dropped, spaces to -), and explicit ids."""
    anchors: set[str] = set(EXPLICIT_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for _, title in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


TEXT = RUNBOOK.read_text()
COMMANDS = quoted_commands(TEXT)
ALL_COMMANDS = sorted({command for doc in DOCS for command in quoted_commands(doc.read_text())}, key=str)


def test_the_runbook_quotes_the_tools_it_is_about() -> None:
    modules = {command.module for command in COMMANDS}
    assert {"scripts.serve", "scripts.ops", "scripts.healthcheck", "scripts.package_model"} <= modules
    quoted = {(command.module, command.arguments[0]) for command in COMMANDS if command.arguments}
    for subcommand in ("describe", "scale", "register", "set-default", "unregister"):
        assert ("scripts.ops", subcommand) in quoted, f"the runbook never shows ops {subcommand}"


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_every_quoted_command_parses(command: QuotedCommand) -> None:
    check_command(command)


@pytest.mark.parametrize("command", [
    QuotedCommand("scripts.ops", ("scale", "deepfake", "--workers", "2")),
    QuotedCommand("scripts.serve", ("launch",)),
    QuotedCommand("scripts.serve", ("token", "--kind", "admin")),
    QuotedCommand("scripts.ops", ("resize", "deepfake", "--min", "2")),
    QuotedCommand("scripts.healthcheck", ("startup",)),
], ids=str)
def test_the_command_check_catches_a_wrong_flag_subcommand_or_choice(command: QuotedCommand) -> None:
    with pytest.raises(AssertionError):
        check_command(command)


def test_commands_are_read_whole_from_code_blocks_and_wrapped_inline_code() -> None:
    text = ("```\n$ python -m scripts.ops scale deepfake --min 3 --run-dir build/serve   # three\nscaled ...\n```\n"
            "run `kubectl exec x -- python -m\nscripts.ops describe deepfake --run-dir /app/run` in the pod")
    assert quoted_commands(text) == [
        QuotedCommand("scripts.ops", ("scale", "deepfake", "--min", "3", "--run-dir", "build/serve")),
        QuotedCommand("scripts.ops", ("describe", "deepfake", "--run-dir", "/app/run"))]


def test_every_alert_has_its_section_and_its_runbook_url_leads_there() -> None:
    anchors = github_anchors(TEXT)
    headings = [title for _, title in HEADING.findall(FENCE.sub("", TEXT))]
    assert alerts()
    for rule in alerts():
        name = rule["alert"]
        assert name in headings, f"no section headed {name}"
        annotations = rule.get("annotations", {})
        url = annotations.get("runbook_url")
        assert url, f"alert {name} has no runbook_url annotation"
        path, _, anchor = url.partition("#")
        assert path.endswith("docs/operations.md"), f"{name}: runbook_url {url} is not this runbook"
        assert anchor in anchors, f"{name}: runbook_url anchor #{anchor} is not in docs/operations.md"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_repository_path_named_exists(doc: Path) -> None:
    text = doc.read_text()
    named = {match for line in code_lines(text) for match in REPO_PATH.findall(line)}
    named |= set(REPO_PATH.findall(FENCE.sub("", text)))
    assert len(named) > 3
    missing = sorted(path for path in named if not (REPO / CREATED_BY_THE_READER.get(path, path)).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_relative_link_and_its_anchor_exists(doc: Path) -> None:
    text = doc.read_text()
    links = [link for link in LINK.findall(text) if not link.startswith(("http://", "https://", "mailto:"))]
    assert links
    own = github_anchors(text)
    for link in links:
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        assert target.exists(), f"link {link}: {target} does not exist"
        if anchor:
            anchors = own if not path else github_anchors(target.read_text())
            assert anchor in anchors, f"link {link}: no heading #{anchor} in {target.name}"


def test_the_anchor_rule_is_githubs() -> None:
    text = "# Alerts: what each means\n## `DeepfakeDown` (page)\n## Logs\n## Logs\n<a id=\"custom\"></a>\n"
    assert github_anchors(text) == {"alerts-what-each-means", "deepfakedown-page", "logs", "logs-1", "custom"}


METRICS_CONFIG = REPO / "config" / "metrics.yaml"
# ts_log.log and ts_metrics.log are log files, not metrics.
METRIC_NAME = re.compile(r"\b(ts_[a-z_]+(?![\w.])|Deepfake[A-Z]\w+|Requests[2-5]XX|[A-Z][A-Za-z]+Utilization)\b")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
RECORDED_NAME = re.compile(r"\bdeepfake:[a-z0-9_]+:[a-z0-9_]+\b")


def declared_metrics() -> set[str]:
    """Every metric config/metrics.yaml declares: TorchServe exports these and only these (README, Prometheus)."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("name"), str):
                names.add(node["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(METRICS_CONFIG.read_text()))
    return names


def test_every_metric_the_runbook_names_is_declared_and_every_recorded_series_has_its_rule() -> None:
    # tests/test_prometheus.py proves the declared names are what a real server exposes.
    alert_names = {rule["alert"] for rule in alerts()}
    named = {HISTOGRAM_SERIES.sub("", name) for name in METRIC_NAME.findall(TEXT)} - alert_names
    assert {"ts_inference_requests_total", "DeepfakePredictions", "DeepfakeWorkerUptimeSeconds"} <= named
    undeclared = sorted(named - declared_metrics())
    assert not undeclared, f"docs/operations.md names metrics config/metrics.yaml does not declare: {undeclared}"
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
                if "record" in rule}
    unknown = sorted(set(RECORDED_NAME.findall(TEXT)) - recorded)
    assert not unknown, f"docs/operations.md names recorded series no rule records: {unknown}"
