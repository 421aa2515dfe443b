#!/usr/bin/env bash
# Create or update the project's virtual environment at <repo>/.venv (idempotent).
#
#   scripts/setup.sh            # install if needed; a no-op when .venv matches requirements/
#   scripts/setup.sh --force    # reinstall into the existing .venv
#   scripts/setup.sh --relock   # rewrite requirements/constraints.txt from the current .venv
#
# Environment: PYTHON (interpreter to build the venv with; default python3.11, else python3).
# Installs every requirements/*.txt with requirements/constraints.txt as the lock, then this
# project in editable mode. A stamp (hash of requirements/, setup.py and the interpreter) in
# .venv records a finished install, so later runs return at once.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
stamp="$venv/.sglang_fair-setup"
lock="$repo/requirements/constraints.txt"
mode=${1:-}

say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "$mode" = "--relock" ]; then
  {
    echo "# Lock: every package of a working environment (Linux x86_64, Python 3.11), from \`pip freeze\`."
    echo "# Used as a constraints file (-c) by scripts/setup.sh so an install resolves to exactly these"
    echo "# versions; it adds no packages by itself. Regenerate: scripts/setup.sh --relock"
    "$venv/bin/python" -m pip freeze --exclude-editable | grep -v -e '^-e ' -e '^sglang_fair' | sort -f
  } >"$lock.new"
  mv "$lock.new" "$lock"
  say "rewrote $lock"
  exit 0
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
  python=$(command -v python3.11 || command -v python3 || true)
fi
[ -n "$python" ] || { say "no python3 found (set PYTHON=/path/to/python3.11)"; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { say "$python is $("$python" -V 2>&1); need Python >= 3.10 (3.11 recommended)"; exit 1; }

reqs=()
for f in "$repo"/requirements/*.txt; do
  [ "$f" = "$lock" ] || reqs+=(-r "$f")
done
want=$(cat "$repo"/requirements/*.txt "$repo/setup.py" <("$python" -VV) | sha256sum | cut -d' ' -f1)

if [ "$mode" != "--force" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c 'import sglang_fair' 2>/dev/null; then
  say ".venv is up to date"
  exit 0
fi

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv with $("$python" -V 2>&1)"
  "$python" -m venv "$venv"
fi
rm -f "$stamp"
say "installing pinned requirements (first time: ~4 min with a package mirror, ~10 min from PyPI; ~11 GB)"
"$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
  -c "$lock" "${reqs[@]}"
say "installing sglang_fair (editable)"
"$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off --no-deps -e "$repo"
"$venv/bin/python" -m pip check >&2 || say "warning: pip check reports conflicts (see above)"
echo "$want" >"$stamp"
say "done in $(( $(date +%s) - start )) s; .venv is $(du -sh "$venv" | cut -f1)"
