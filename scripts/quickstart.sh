#!/usr/bin/env bash
# Install ckpt-sync and run its main job on the embedded default repository (a local folder, no
# cloud account): make a key if you have none, save a real torch checkpoint, push it, pull it into
# a fresh folder and show that it matches.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[torch]'
python3 examples/quickstart.py
