#!/usr/bin/env bash
# Build the virtualenv holding the tools ctrops is compared against (LIBFFM through
# pylibffm, xLearn). They are separate from ctrops' own environment on purpose:
# both are old, compiled from source at install, and pin their own numpy/scipy.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=bench-out/baselines-venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q numpy scipy pylibffm xlearn
"$venv/bin/python" -c "import pylibffm, xlearn; print('baselines ready:', '$venv')"
