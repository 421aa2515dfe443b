#!/usr/bin/env bash
# Set up .venv if needed, then run the tests (pytest.ini: everything but `slow` and `gpu`).
# Arguments go to pytest, e.g. scripts/test.sh -m e2e, scripts/test.sh test/e2e -x.
# Exit status is pytest's (5 when nothing was collected).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
cd "$repo"
exec "$repo/.venv/bin/python" -m pytest "$@"
