#!/usr/bin/env bash
# Set up .venv if needed, then start the server (default: the built-in tiny model, on CPU where
# there is no GPU). Arguments go to `python -m sglang_fair.launch_server` (see --help).
#
#   scripts/serve.sh                                  # tiny model on http://127.0.0.1:30000
#   scripts/serve.sh --model-path meta-llama/Llama-2-7b-hf --batch-policy fairbatching
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
exec "$repo/.venv/bin/python" -m sglang_fair.launch_server "$@"
