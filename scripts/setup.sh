#!/usr/bin/env bash
# Set up Autopack in this checkout: a virtual environment in .venv with the project and its test
# tools, bubblewrap (the test sandbox) and, as root, faketime and Node.js (test tools). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# A venv without pip (python3 -m venv stopped half-way, say python3-venv missing on Debian) is made
# again, not skipped: otherwise every later run fails on "No module named pip".
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  "$PYTHON" -m venv --clear .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing bubblewrap (the test sandbox) …"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "autopack: bubblewrap is missing; install it with:  sudo apt-get install -y bubblewrap" >&2
    echo "          (or run without a sandbox, with no isolation: export AUTOPACK_SANDBOX=none)" >&2
    exit 1
  fi
fi
# Test tools (the tests only), installed as root where apt-get is.
test_tool() {  # command, Debian package, what for
  if ! command -v "$1" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $2 ($3) …"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
  fi
}
test_tool faketime faketime "a worker with a skewed clock, for the lease-clock tests"
test_tool node nodejs "the dashboard's page script, run against a live API"
echo "setup done: .venv ready, $(bwrap --version)"
