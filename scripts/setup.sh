#!/usr/bin/env bash
# Creates .venv with the pinned packages of requirements.txt.
# Re-running is fast: the install is skipped while requirements.txt is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV=.venv
STAMP="$VENV/.requirements.sha256"

fail() { echo "setup: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null ||
  fail "Python 3.11 is required (found: $("$PYTHON" --version 2>&1 || echo none)). Install python3.11 or set PYTHON=/path/to/python3.11."

# TorchServe's frontend is a Java program: stop here, with the fix, rather than at 'make demo' step 5.
if ! command -v java >/dev/null 2>&1; then
  fail "Java 17+ is required by TorchServe and was not found on PATH.
  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless
  Fedora/RHEL:   sudo dnf install -y java-17-openjdk-headless
  macOS:         brew install openjdk@17"
fi
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
[ -n "$java_major" ] && [ "$java_major" -ge 17 ] ||
  fail "Java 17+ is required by TorchServe; found: $(java -version 2>&1 | head -n1). Install openjdk-17-jre-headless."

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# Debian packages the tests run for real. Installed as root or with passwordless sudo; otherwise a warning
# names the command, and only the tests that need the package fail.
#   debian_packages PURPOSE LOG PACKAGE... : apt-get install PACKAGE... (quietly; output in /tmp/setup-LOG.log)
debian_packages() {
  local purpose=$1 log=/tmp/setup-$2.log; shift 2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  fi
  if [ "$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: WARNING: missing $*, $purpose; those tests will fail. Install them:" >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y $*   (or put the programs on PATH)" >&2
    return 0
  fi
  echo "setup: installing the Debian packages $* ($purpose)"
  { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "$@"; } >"$log" 2>&1 || fail "apt-get install $* failed; see $log"
}

# Prometheus is what the tests scrape TorchServe's metrics with (promtool, in the same package, checks the rules).
command -v prometheus >/dev/null 2>&1 ||
  debian_packages "the Prometheus server the tests scrape TorchServe with" prometheus prometheus
# nginx is the TLS proxy of SECURITY.md, run by the tests in front of TorchServe; envsubst (gettext-base)
# renders its site (config/nginx/render.sh). Debian puts nginx in /usr/sbin.
{ { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } && command -v envsubst >/dev/null 2>&1; } ||
  debian_packages "the TLS proxy the tests run" nginx nginx gettext-base
# docker-compose (Compose v1, Python) validates docker/compose*.yaml offline (`docker-compose config`, no engine
# needed) in tests/docker. Deploy with Docker's own Compose v2 (`docker compose`); v1 is only the schema check.
command -v docker-compose >/dev/null 2>&1 ||
  debian_packages "the offline check of docker/compose.yaml" docker-compose docker-compose

# Debian's chromium + its matching chromium-driver run the web page's browser test (selenium, headless).
{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } ||
  debian_packages "the web page's browser test" chromium chromium chromium-driver

wanted=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
  echo "setup: .venv is up to date"
  "$VENV/bin/python" -m scripts.grpc_stubs >/dev/null || fail "generating the gRPC stubs failed"
  exit 0
fi

echo "setup: installing pinned packages into $VENV (first run downloads ~5.5 GB of torch + CUDA wheels)"
# Some machines' pip configs name local mirrors that do not exist; their warnings are noise here.
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt 2>&1 |
  { grep -v "is ignored: it is neither a file nor a directory" || true; }; then
  fail "pip install failed (see the messages above)"
fi
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt 2>&1 |
  { grep -v "is ignored: it is neither a file nor a directory" || true; }; then
  fail "pip install --no-deps failed (see the messages above)"
fi
"$VENV/bin/python" -c 'import torch, torchvision, timm, cv2, ts, model_archiver, grpc, grpc_tools' ||
  fail "packages installed but do not import; delete .venv and run again"
"$VENV/bin/python" -m scripts.grpc_stubs || fail "generating the gRPC stubs failed"
echo "$wanted" > "$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
