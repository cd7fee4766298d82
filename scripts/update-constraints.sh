#!/usr/bin/env bash
# Move the test environment forward: install the newest releases that pyproject.toml allows
# into a fresh virtualenv, run the README's checks on them, and only if they pass write the
# versions to constraints.txt (commit it with the code that passed).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
pip install -q torch==2.13.0 -e ".[dev]"
pip install -q --no-deps spandrel  # see README: its torchvision is not wanted
lint-imports
python -m pytest -q
{
  echo "# The versions the test suite last passed with: pip install ... -c constraints.txt (see README,"
  echo "# \"Moving the test environment forward\"; regenerate with scripts/update-constraints.sh)."
  pip freeze --exclude-editable | sed 's/+cpu$//'
} > constraints.txt
echo "constraints.txt updated from $venv; review the diff and commit it"
