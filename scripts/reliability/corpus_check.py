"""Bad-input corpus check: every kind of bad request gets its own clear answer, alone and inside mixed batches.

Against a production-config TorchServe (token auth on) started here, or any running server through
`check_server`:

(a) alone: each entry of scripts/reliability/bad_inputs.py is sent by itself; its status, and its JSON error
    (code, field, a non-empty message and `accepted`) or its 200 verdict, must be the ones the entry
    expects; a body over the frontend's max_request_size must get the bare 413 with an empty body;
(b) mixed: every round, the entries that reach a worker are shuffled and interleaved one for one with good
    images, and sent in waves of the model's batchSize, all of a wave at once, so that bad and good items
    share TorchServe batches (the frontend-answered ones ride along). Every good item must get 200 and the
    probability it gets alone (so a bad neighbour changes nothing), every bad one its own answer. A good
    answer whose batch held more items than its wave had good ones provably shared its batch with bad ones;
(c) workers: their ids, pids and start times must be the same before and after (no worker restarted) and
    their resident memory is sampled throughout (before, peak, after).

    python -m scripts.reliability.corpus_check                      # model_store/deepfake.mar (make demo)
    python -m scripts.reliability.corpus_check --model-store model_store --rounds 3 --output-dir /tmp/corpus

Writes corpus.json (every answer) and corpus.md (a table: kind, status, code, field, ms) into --output-dir
and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import requests

from scripts.reliability.bad_inputs import (
    BadInput,
    CorpusLimits,
    bad_inputs,
    describe_request,
    good_variants,
    sample_jpeg,
)
from scripts.reliability.report import RESULTS_DIR, MemorySampler, machine_description, machine_line, write_report
from scripts.reliability.server import MODEL_NAME, inference_headers, running_server, worker_identities
from scripts.serve import RUNTIME_PROPERTIES_FILENAME, TorchServe, auth_headers, read_properties

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "corpus"
# Probabilities of one image scored alone and in a batch differ by float rounding of the batched kernels only.
PROBABILITY_TOLERANCE = 1e-4
ERROR_KEYS = ("code", "message", "status", "field", "accepted")


@dataclass(frozen=True)
class CheckSettings:
    """How a running server is checked.

    Attributes:
        model: the model each entry is sent to alone, and the good images' lone scores come from.
        batch_model: the model of the mixed waves (the same export as `model`; it may batch differently).
        rounds: mixed rounds; each sends every entry once and as many good images.
        wave_size: items that reach a worker per wave; None = batch_model's batchSize, so a wave can fill a batch.
        timeout: seconds one request may take.
        seed: of the shuffles, so a failing order can be replayed.

    """

    model: str = MODEL_NAME
    batch_model: str = MODEL_NAME
    rounds: int = 3
    wave_size: int | None = None
    timeout: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or (self.wave_size is not None and self.wave_size < 2):
            raise ValueError("rounds must be >= 1 and wave_size >= 2 (a wave mixes a bad and a good item)")


@dataclass(frozen=True)
class CorpusCheckConfig:
    """One run of the script: a server started from a model store, and where the report goes.

    Attributes:
        model_store: holds deepfake.mar (make demo builds model_store/).
        output_dir: where corpus.json and corpus.md are written.
        run_dir: the server's run folder (config, logs, keys).
        image: a good JPEG the corpus is derived from; None = a generated photo-like one.
        config: the server config: production (token auth, the shipped limits) or dev.
        settings: how the server is checked.

    """

    model_store: Path = REPO_ROOT / "model_store"
    output_dir: Path = RESULTS_DIR
    run_dir: Path = REPO_ROOT / "build" / "reliability" / "corpus"
    image: Path | None = None
    config: str = "production"
    settings: CheckSettings = dataclass_field(default_factory=CheckSettings)


@dataclass(frozen=True)
class Target:
    """Where requests go: the inference API's base URL and the headers every request carries (the token)."""

    base_url: str
    headers: Mapping[str, str]
    timeout: float = 120.0


@dataclass
class Answer:
    """What one request got, and what was wrong with it (nothing, when `problems` is empty).

    Attributes:
        name: the corpus entry's name, or "good:<n>" for the n-th good image.
        status: HTTP status (0: no answer at all).
        code: the JSON error's code, if any.
        field: the JSON error's field, if any.
        ms: from sending to the whole answer.
        probability_fake: of a 200 verdict.
        batch_size: the size of the batch a 200 verdict was scored in (timing_ms.batch_size).
        problems: every way the answer differs from the one expected.

    """

    name: str
    status: int
    code: str | None = None
    field: str | None = None
    ms: float = 0.0
    probability_fake: float | None = None
    batch_size: int | None = None
    problems: list[str] = dataclass_field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The answer is the one expected."""
        return not self.problems


# --- judging one answer (pure) ---------------------------------------------------------------------------------


def verdict_problems(body: Any) -> list[str]:
    """What is wrong with a 200 body that should be a verdict."""
    if not isinstance(body, dict):
        return [f"a verdict must be a JSON object, got {type(body).__name__}"]
    problems = []
    if body.get("label") not in ("real", "fake"):
        problems.append(f"label {body.get('label')!r} is not real/fake")
    probability = body.get("probability_fake")
    if not (isinstance(probability, (int, float)) and 0.0 <= probability <= 1.0):
        problems.append(f"probability_fake {probability!r} is not in [0, 1]")
    return problems


def error_problems(item: BadInput, status: int, body: Any) -> list[str]:
    """What is wrong with an error body against the entry's expected code and field."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return [f"expected a JSON error body, got {json.dumps(body)[:200]}"]
    problems = [f"error has no '{key}'" for key in ERROR_KEYS if key not in error]
    if error.get("code") != item.code:
        problems.append(f"code {error.get('code')!r}, expected {item.code!r}")
    if error.get("field") != item.field:
        problems.append(f"field {error.get('field')!r}, expected {item.field!r}")
    if error.get("status") != status:
        problems.append(f"the body's status {error.get('status')!r} differs from the HTTP status {status}")
    for key in ("message", "accepted"):
        if not (isinstance(error.get(key), str) and error[key].strip()):
            problems.append(f"'{key}' is empty")
    return problems


def answer_problems(item: BadInput, status: int, content: bytes) -> list[str]:
    """Every way an answer (status and raw body) differs from what the entry expects; [] when it is right."""
    problems = [] if status == item.status else [f"status {status}, expected {item.status}"]
    if item.frontend:
        if content:
            problems.append(f"the frontend's {item.status} should have an empty body, got {content[:120]!r}")
        return problems
    try:
        body = json.loads(content)
    except ValueError:
        return [*problems, f"the body is not JSON: {content[:120]!r}"]
    return problems + (verdict_problems(body) if item.code is None else error_problems(item, status, body))


def _read_answer(name: str, status: int, content: bytes, ms: float, problems: list[str]) -> Answer:
    answer = Answer(name, status, ms=round(ms, 1), problems=problems)
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            answer.code, answer.field = error.get("code"), error.get("field")
        elif isinstance(body.get("probability_fake"), (int, float)):
            answer.probability_fake = float(body["probability_fake"])
            batch = (body.get("timing_ms") or {}).get("batch_size")
            answer.batch_size = batch if isinstance(batch, int) else None
    return answer


# --- sending ---------------------------------------------------------------------------------------------------


def post(target: Target, url: str, request: Mapping[str, Any]) -> tuple[int, bytes, float]:
    """Posts one request; (status, body, ms), status 0 when no answer came (connection reset, timeout)."""
    headers = {**target.headers, **request.get("headers", {})}
    arguments = {key: value for key, value in request.items() if key != "headers"}
    started = time.perf_counter()
    try:
        response = requests.post(url, headers=headers, timeout=target.timeout, **arguments)
        status, content = response.status_code, response.content
    except requests.RequestException as error:
        status, content = 0, f"no answer: {type(error).__name__}: {error}".encode()
    return status, content, (time.perf_counter() - started) * 1000.0


def send_bad(target: Target, item: BadInput, model: str) -> Answer:
    """Sends one corpus entry to `model` and judges its answer."""
    status, content, ms = post(target, item.url(target.base_url, model), item.request)
    problems = answer_problems(item, status, content) if status else [content.decode()]
    return _read_answer(item.name, status, content, ms, problems)


def send_good(target: Target, index: int, image: bytes, model: str, expected: float | None) -> Answer:
    """Sends good image `index` to `model`; it must get a verdict (with probability `expected`, when given)."""
    status, content, ms = post(target, f"{target.base_url}/predictions/{model}", {"data": image})
    answer = _read_answer(f"good:{index}", status, content, ms, [])
    if status != 200:
        answer.problems.append(f"a good image got {status}: {content[:200]!r}")
    elif answer.probability_fake is None:
        answer.problems.append(f"a good image got no verdict: {content[:200]!r}")
    elif expected is not None and abs(answer.probability_fake - expected) > PROBABILITY_TOLERANCE:
        answer.problems.append(f"probability_fake {answer.probability_fake} in a mixed batch, {expected} alone")
    return answer


def check_alone(target: Target, corpus: Sequence[BadInput], model: str) -> list[Answer]:
    """(a): every entry sent by itself, one after another."""
    return [send_bad(target, item, model) for item in corpus]


# --- mixed waves -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One request of a wave: a corpus entry (bad) or good image `index`."""

    bad: BadInput | None = None
    good: int | None = None


def mixed_waves(corpus: Sequence[BadInput], goods: int, rounds: int, wave_size: int, seed: int = 0) -> list[list[Job]]:
    """The waves of (b): per round, the worker-reaching entries shuffled and interleaved one for one with goods.

    Each wave holds exactly `wave_size` worker-reaching jobs (the last of a round is topped up with good
    images), so with a wave size of the model's batchSize a wave can fill one batch; the frontend-answered
    entries ride along with the first waves of each round, outside that count (they never reach a batch).

    Args:
        corpus: the entries.
        goods: how many different good images there are (they are used in turn).
        rounds: how many times the whole corpus is sent.
        wave_size: worker-reaching jobs per wave.
        seed: of the shuffles.

    """
    shuffle = random.Random(seed)
    handled = [item for item in corpus if item.reaches_handler]
    answered_early = [item for item in corpus if not item.reaches_handler]
    waves: list[list[Job]] = []
    next_good = 0
    for _ in range(rounds):
        order = shuffle.sample(handled, len(handled))
        jobs: list[Job] = []
        for item in order:
            jobs += [Job(bad=item), Job(good=next_good % goods)]
            next_good += 1
        while len(jobs) % wave_size:
            jobs.append(Job(good=next_good % goods))
            next_good += 1
        round_waves = [jobs[start:start + wave_size] for start in range(0, len(jobs), wave_size)]
        for index, item in enumerate(answered_early):
            round_waves[index % len(round_waves)].append(Job(bad=item))
        waves += round_waves
    return waves


@dataclass
class MixedResult:
    """(b)'s outcome: every answer, per wave, and how the batches were shared."""

    waves: list[list[Answer]]
    wave_sizes: list[int]

    @property
    def answers(self) -> list[Answer]:
        """Every answer of every wave."""
        return [answer for wave in self.waves for answer in wave]

    def shared_batches(self) -> int:
        """Good answers whose batch held more items than their wave had good ones: they shared it with bad ones."""
        shared = 0
        for wave in self.waves:
            goods = [answer for answer in wave if answer.name.startswith("good:")]
            shared += sum(1 for answer in goods if answer.batch_size is not None and answer.batch_size > len(goods))
        return shared

    def summary(self) -> dict[str, Any]:
        """Counts for the report."""
        answers = self.answers
        goods = [answer for answer in answers if answer.name.startswith("good:")]
        return {
            "waves": len(self.waves),
            "requests": len(answers),
            "good": len(goods),
            "bad": len(answers) - len(goods),
            "mismatches": sum(1 for answer in answers if not answer.ok),
            "good_batch_sizes": dict(sorted(Counter(a.batch_size for a in goods if a.batch_size).items())),
            "good_answers_in_batches_shared_with_bad_ones": self.shared_batches(),
            "statuses": dict(sorted(Counter(str(answer.status) for answer in answers).items())),
        }


def fire(jobs: Sequence[Callable[[], Answer]]) -> list[Answer]:
    """Runs every job on its own thread, all released at once by a barrier; answers in job order."""
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], Answer]) -> Answer:
        barrier.wait(timeout=60)
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def check_mixed(target: Target, corpus: Sequence[BadInput], goods: Sequence[bytes], lone_scores: Sequence[float],
                settings: CheckSettings, wave_size: int) -> MixedResult:
    """(b): the waves of mixed_waves, one after another, each sent all at once to settings.batch_model."""
    model = settings.batch_model
    waves = mixed_waves(corpus, len(goods), settings.rounds, wave_size, settings.seed)
    answers = []
    for wave in waves:
        jobs = [
            (lambda job=job: send_bad(target, job.bad, model)) if job.bad is not None
            else (lambda job=job: send_good(target, job.good, goods[job.good], model, lone_scores[job.good]))
            for job in wave
        ]
        answers.append(fire(jobs))
    return MixedResult(answers, [sum(1 for job in wave if job.bad is None or job.bad.reaches_handler)
                                 for wave in waves])


# --- the server side ---------------------------------------------------------------------------------------------


def _management(server: TorchServe, path: str, **params: str) -> Any:
    response = requests.get(f"{server.config.management_url}{path}", params=params,
                            headers=auth_headers(server.config.run_dir, "management"), timeout=30)
    response.raise_for_status()
    return response.json()


def served_limits(server: TorchServe, model: str) -> CorpusLimits:
    """The limits in force: the handler's from its describe answer, the frontend's from the runtime config."""
    described = _management(server, f"/models/{model}", customized="true")[0].get("customizedMetadata")
    described = json.loads(described) if isinstance(described, str) else described or {}
    properties = read_properties(server.config.run_dir / RUNTIME_PROPERTIES_FILENAME)
    defaults = CorpusLimits()
    return CorpusLimits(
        max_upload_bytes=int(described.get("max_upload_bytes", defaults.max_upload_bytes)),
        max_request_size=int(properties.get("max_request_size", 6_553_500)),  # TorchServe's own default
        max_image_pixels=int(described.get("max_image_pixels", defaults.max_image_pixels)),
    )


def batch_size_of(server: TorchServe, model: str) -> int:
    """The model's batchSize as the management API reports it."""
    return int(_management(server, f"/models/{model}")[0]["batchSize"])


def _identities(server: TorchServe, models: Sequence[str]) -> dict[str, list[list[Any]]]:
    return {model: [list(worker) for worker in worker_identities(server, model)] for model in dict.fromkeys(models)}


@dataclass
class CorpusReport:
    """Everything one check found; `ok` when every answer was the expected one and no worker restarted."""

    settings: CheckSettings
    limits: CorpusLimits
    corpus: list[BadInput]
    alone: list[Answer]
    good_alone: list[Answer]
    mixed: MixedResult
    workers_before: dict[str, list[list[Any]]]
    workers_after: dict[str, list[list[Any]]]
    memory: dict[str, Any]
    seconds: float

    @property
    def restarted(self) -> bool:
        """Whether any worker's id, pid or start time changed."""
        return self.workers_before != self.workers_after

    @property
    def mismatches(self) -> list[str]:
        """One line per answer that was not the expected one, and per restarted worker."""
        lines = [f"alone {a.name}: {'; '.join(a.problems)}" for a in self.alone + self.good_alone if not a.ok]
        lines += [f"mixed wave {index} {a.name}: {'; '.join(a.problems)}"
                  for index, wave in enumerate(self.mixed.waves) for a in wave if not a.ok]
        if self.restarted:
            lines.append(f"workers changed: before {self.workers_before}, after {self.workers_after}")
        return lines

    @property
    def ok(self) -> bool:
        """No mismatch at all."""
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        expected = {item.name: item for item in self.corpus}
        return {
            "ok": self.ok,
            "settings": asdict(self.settings),
            "limits": asdict(self.limits),
            "kinds": len(self.corpus),
            "seconds": round(self.seconds, 1),
            "mismatches": self.mismatches,
            "alone": [{
                "name": a.name, "category": expected[a.name].category, "description": expected[a.name].description,
                "request": describe_request(expected[a.name].request), "path": expected[a.name].path,
                "expected": {"status": expected[a.name].status, "code": expected[a.name].code,
                             "field": expected[a.name].field, "frontend": expected[a.name].frontend},
                **asdict(a),
            } for a in self.alone],
            "good_alone": [asdict(a) for a in self.good_alone],
            "mixed": {**self.mixed.summary(), "wave_sizes": self.mixed.wave_sizes,
                      "failures": [asdict(a) for a in self.mixed.answers if not a.ok]},
            "workers": {"before": self.workers_before, "after": self.workers_after, "restarted": self.restarted},
            "memory": self.memory,
        }


def _memory_summary(sampler: MemorySampler) -> dict[str, Any]:
    """Per worker: RSS (MiB) at the start, the peak and the end of the check."""
    samples = sampler.samples
    pids = sorted(set().union(*(sample.workers for sample in samples))) if samples else []
    workers = {}
    for pid in pids:
        values = [sample.workers[pid] for sample in samples if pid in sample.workers]
        workers[str(pid)] = {"start_mb": round(values[0], 1), "peak_mb": round(max(values), 1),
                             "end_mb": round(values[-1], 1)}
    return {"samples": len(samples), "interval_seconds": sampler.interval, "workers": workers}


def check_server(server: TorchServe, good: bytes, settings: CheckSettings | None = None) -> CorpusReport:
    """Runs (a), (b) and (c) against a running server (see the module docstring).

    Args:
        server: a running TorchServe serving settings.model and settings.batch_model (the same export).
        good: a good JPEG: the corpus is derived from it and its variants are the good images of (b).
        settings: what to check how; default CheckSettings().

    """
    settings = settings or CheckSettings()
    started = time.monotonic()
    target = Target(server.config.inference_url, inference_headers(server), settings.timeout)
    limits = served_limits(server, settings.model)
    corpus = bad_inputs(good, limits)
    goods = good_variants(good)
    wave_size = settings.wave_size or batch_size_of(server, settings.batch_model)
    models = [settings.model, settings.batch_model]
    before = _identities(server, models)
    with MemorySampler(server, interval=0.5) as sampler:
        alone = check_alone(target, corpus, settings.model)
        lone = [send_good(target, index, image, settings.model, None) for index, image in enumerate(goods)]
        scores = [answer.probability_fake if answer.probability_fake is not None else float("nan") for answer in lone]
        mixed = check_mixed(target, corpus, goods, scores, settings, wave_size)
    after = _identities(server, models)
    return CorpusReport(replace(settings, wave_size=wave_size), limits, corpus, alone, lone, mixed, before, after,
                        _memory_summary(sampler), time.monotonic() - started)


# --- report --------------------------------------------------------------------------------------------------------


def markdown(report: CorpusReport, machine: dict[str, Any], command: str) -> list[str]:
    """corpus.md: the verdict, a table of the lone answers, the mixed rounds and the workers."""
    mixed = report.mixed.summary()
    expected = {item.name: item for item in report.corpus}
    lines = [
        "# Bad-input corpus", "",
        f"`{command}`", "",
        machine_line(machine), "",
        f"**{'PASS' if report.ok else 'FAIL'}**: {len(report.corpus)} kinds, each alone and in {mixed['waves']} "
        f"mixed waves of {report.settings.wave_size} ({report.settings.rounds} rounds, {mixed['requests']} requests: "
        f"{mixed['bad']} bad, {mixed['good']} good); {len(report.mismatches)} mismatches; workers "
        f"{'RESTARTED' if report.restarted else 'unchanged (same ids, pids, start times)'}; {report.seconds:.0f} s.",
        "",
        f"Limits in force: image files up to {report.limits.max_upload_bytes} bytes (handler), requests up to "
        f"{report.limits.max_request_size} bytes (frontend), images up to {report.limits.max_image_pixels} pixels.",
        "", "## Each kind alone", "",
        "| kind | category | status | code | field | ms | |", "|---|---|---|---|---|---|---|",
    ]
    for answer in report.alone + report.good_alone:
        item = expected.get(answer.name)
        shown = "(empty body)" if item is not None and item.frontend and answer.ok else answer.code or "verdict"
        mark = "ok" if answer.ok else "**" + "; ".join(answer.problems) + "**"
        lines.append(f"| {answer.name} | {item.category if item else 'good image'} | {answer.status} | {shown} | "
                     f"{answer.field or ''} | {answer.ms:.0f} | {mark} |")
    lines += [
        "", "## Mixed batches", "",
        f"Good answers by the size of the batch they were scored in: {mixed['good_batch_sizes']}; "
        f"{mixed['good_answers_in_batches_shared_with_bad_ones']} of {mixed['good']} were in a batch larger than "
        f"their wave's good items, so it held bad ones too. Every good answer must equal its lone probability "
        f"(within {PROBABILITY_TOLERANCE:g}). Statuses: {mixed['statuses']}.",
        "", "## Workers", "",
        "| worker pid | RSS start (MiB) | peak | end |", "|---|---|---|---|",
    ]
    lines += [f"| {pid} | {m['start_mb']} | {m['peak_mb']} | {m['end_mb']} |"
              for pid, m in report.memory["workers"].items()]
    if report.mismatches:
        lines += ["", "## Mismatches", "", *[f"- {line}" for line in report.mismatches]]
    return lines


def write(report: CorpusReport, output_dir: Path, command: str) -> list[Path]:
    """Writes corpus.json and corpus.md; returns their paths."""
    machine = machine_description()
    results = {"command": command, "machine": machine, **report.to_dict()}
    return write_report(output_dir, NAME, results, markdown(report, machine, command))


def run(config: CorpusCheckConfig, command: str) -> CorpusReport:
    """Starts the server, checks it, writes the report."""
    good = config.image.read_bytes() if config.image else sample_jpeg()
    with running_server(config.model_store, config.run_dir, config.config) as server:
        report = check_server(server, good, config.settings)
    paths = write(report, config.output_dir, command)
    print(f"{'PASS' if report.ok else 'FAIL'}: {len(report.corpus)} kinds, {len(report.mismatches)} mismatches; "
          f"wrote {', '.join(str(path) for path in paths)}", flush=True)
    for line in report.mismatches[:20]:
        print(f"  {line}", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; exits 1 on any mismatch."""
    defaults = CorpusCheckConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=defaults.model_store)
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir)
    parser.add_argument("--run-dir", type=Path, default=defaults.run_dir, help="the server's run folder")
    parser.add_argument("--config", choices=["production", "dev"], default=defaults.config)
    parser.add_argument("--image", type=Path, help="a good JPEG to derive the corpus from (default: generated)")
    parser.add_argument("--rounds", type=int, default=defaults.settings.rounds)
    parser.add_argument("--wave-size", type=int, help="worker-reaching requests per wave (default: batchSize)")
    parser.add_argument("--seed", type=int, default=defaults.settings.seed)
    args = parser.parse_args(argv)
    settings = CheckSettings(rounds=args.rounds, wave_size=args.wave_size, seed=args.seed)
    config = CorpusCheckConfig(model_store=args.model_store, output_dir=args.output_dir, run_dir=args.run_dir,
                               image=args.image, config=args.config, settings=settings)
    command = "python -m scripts.reliability.corpus_check " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run(config, command.strip())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
