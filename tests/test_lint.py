"""House rules that a grep or a linter can check."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ruff_passes():
    completed = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(REPO_ROOT)],
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_handler_never_imports_training_or_scripts():
    # The .mar carries handler/ alone: an import of training/ or scripts/ would fail inside a worker.
    offenders = [
        f"{path.name}:{number}"
        for path in (REPO_ROOT / "handler").glob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(("import training", "from training", "import scripts", "from scripts"))
    ]
    assert offenders == []


def test_every_torch_load_uses_weights_only():
    calls = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for folder in ("handler", "training", "scripts")
        for path in (REPO_ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "torch.load(" in line and "weights_only=True" not in line
    ]
    assert calls == []
