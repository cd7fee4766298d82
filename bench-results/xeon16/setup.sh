#!/usr/bin/env bash
# Run on the device machine (16-core Xeon) in two calls, the machine kept warm between them:
#   1) carry .whl    (openvino, openvino-telemetry):                         bash bench-results/xeon16/setup.sh 1
#   2) carry .whl2   (diffusers, openvino-genai, openvino-tokenizers) and
#            .whl-oi (optimum-intel with its transformers, huggingface_hub, diffusers, nncf): ... setup.sh 2
# sdcli runs from the checkout (PYTHONPATH); optimum-intel from its own site (optimum-python).
set -euo pipefail
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "${@:2}"; }
case "$1" in
  1) pip_install /tmp/site .whl/*.whl ;;
  2) pip_install /tmp/site .whl2/*.whl && pip_install /tmp/site-oi .whl-oi/*.whl ;;
esac
lscpu | grep "Model name"
