#!/usr/bin/env bash
# The timm/torchvision tests (tests/test_vision_models.py) against the real packages.
#
# Why a stage of its own: PyPI's torchvision wheels are CUDA builds whose compiled ops do not
# load beside the CPU torch 2.13.0 that constraints.txt pins ("operator torchvision::nms does
# not exist"), and timm imports torchvision. They do load beside the torch release they were
# built for, which runs on the CPU too. So this script keeps a virtual environment with that
# pair (on top of the main environment's packages, swamp's own included) and runs the vision
# tests there, where a missing package fails instead of skipping (SWAMP_REQUIRE_VISION=1).
#
# The environment lives in $SWAMP_VISION_VENV (default ~/.cache/swamp/vision-venv) and is made
# again when its torch is not the pinned one. On this machine kind pip takes both wheels from
# local disk (about 5.3 GB installed, a minute or two).
set -euo pipefail
cd "$(dirname "$0")/.."

case "$(uname -m)" in
  aarch64|arm64) torch_pin=2.9.1;  vision_pin=0.24.1 ;;   # CPU builds there
  *)             torch_pin=2.14.1; vision_pin=0.29.1 ;;
esac
venv="${SWAMP_VISION_VENV:-$HOME/.cache/swamp/vision-venv}"

if ! "$venv/bin/python" -c "
import sys, torch, torchvision.ops, timm
sys.exit(torch.__version__.split('+')[0] != '$torch_pin')" 2>/dev/null; then
  echo "tests/vision.sh: making $venv (torch $torch_pin, torchvision $vision_pin, timm)"
  rm -rf "$venv"
  python -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install -q "torch==$torch_pin" "torchvision==$vision_pin" "timm>=0.9"
fi

# PYTHONPATH: this checkout's swamp, whatever the main environment has installed.
SWAMP_REQUIRE_VISION=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" \
  "$venv/bin/python" -m pytest -p no:cacheprovider tests/test_vision_models.py "$@"
