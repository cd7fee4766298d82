#!/usr/bin/env bash
# A virtualenv with optimum-intel for `sdcli bench --peers ...,optimum --optimum-python .venv-oi/bin/python`
# (its pins, transformers<5.6 among them, cannot live beside sdcli's).  PyPI's torchvision
# fails to import beside the CPU build of torch that this installs, and optimum-intel's
# diffusion pipelines do not need it: it is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-oi
.venv-oi/bin/python -m pip install -q --upgrade pip
.venv-oi/bin/pip install -q torch==2.13.0 "optimum-intel[openvino,diffusers]==2.2.0"
.venv-oi/bin/pip uninstall -q -y torchvision
.venv-oi/bin/python -c "from optimum.intel import OVStableDiffusionPipeline" && echo ".venv-oi/bin/python is ready"
