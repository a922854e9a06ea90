#!/usr/bin/env bash
# Install ckpt-sync into the project's virtual environment (.venv/, see scripts/venv.sh) and run its
# main job on the embedded default repository (a local folder, no cloud account): make a key if you
# have none, save a real torch checkpoint, push it, pull it into a fresh folder and show that it
# matches. Everything it writes lives in a temporary folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
ckpt_sync_venv
if [ "${CKPT_SYNC_SETUP_ONLY:-}" = 1 ]; then exit 0; fi
# torch first and pinned: a loose requirement would pull the newest CUDA build (GBs). From PyPI
# torch==2.13.0 is itself a CUDA build on Linux; on a CPU-only host install the CPU build first with
#   .venv/bin/python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e '.[torch]'
# The bytecode a wheel install writes. An editable install leaves it to the first import, which never
# writes it where PYTHONDONTWRITEBYTECODE is set: every command would then compile what it imports.
"$PY" -m compileall -q ckpt_sync providers >/dev/null
"$PY" examples/quickstart.py
