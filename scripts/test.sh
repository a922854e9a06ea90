#!/usr/bin/env bash
# Install what the tests need and run the whole suite. The S3 (moto), Azure (Azurite) and GCS
# emulator servers are installed if missing and started by the test session itself (tests/servers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: a loose requirement would pull a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
ruff check .
set +e
python3 -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": that is a failure here, never a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
