#!/usr/bin/env bash
# Install what the tests need into the project's virtual environment (.venv/, see scripts/venv.sh)
# and run the whole suite. The S3 (moto), Azure (Azurite) and GCS emulator servers are installed if
# missing and started by the test session itself (tests/servers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
ckpt_sync_venv
if [ "${CKPT_SYNC_SETUP_ONLY:-}" = 1 ]; then exit 0; fi
# torch first and pinned: a loose requirement would pull a multi-GB CUDA build (see README: a
# CPU-only host gets the CPU build with --index-url https://download.pytorch.org/whl/cpu).
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e '.[test]'
# The bytecode a wheel install writes. An editable install leaves it to the first import, which never
# writes it where PYTHONDONTWRITEBYTECODE is set: every command would then compile what it imports.
"$PY" -m compileall -q ckpt_sync providers >/dev/null
"$PY" -m ruff check .
# libfaketime moves one process's wall clock for the clock-skew tests (Debian/Ubuntu package faketime).
if ! command -v faketime >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="no"; fi
    if [ "$sudo" = no ] || ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq faketime; } >/dev/null 2>&1; then
        echo "ckpt-sync: could not install faketime (apt install faketime): the clock-skew tests will fail" >&2
    fi
fi
set +e
# One worker per core, at most four (pytest-xdist): most tests wait on subprocesses and servers, so
# two workers on two cores finish the suite in about two thirds of the time one takes.
"$PY" -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": that is a failure here, never a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
