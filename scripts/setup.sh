#!/usr/bin/env bash
# Set up a fresh machine for tunesmith: a .venv with PyTorch (CPU build unless an NVIDIA GPU is
# present), tunesmith and its dependencies. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "==> installing PyTorch (CUDA build)"
    "${PIP[@]}" install "torch>=2.4"
  else
    # The CPU build: pinned, because an unpinned torch pulls a multi-GB CUDA build.
    echo "==> installing PyTorch 2.13.0 (CPU build)"
    # (Elsewhere, set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index to avoid the CUDA download.)
    "${PIP[@]}" install "torch==2.13.0"
  fi
fi

if ! .venv/bin/python -c "import tunesmith, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.tunesmith-installed ]; then
  echo "==> installing tunesmith and its dependencies"
  # The gguf extra builds llama.cpp from source (llama-cpp-python has no PyPI wheel). CI needs it for the
  # llama.cpp tests; where the build fails they are skipped, so the rest of the setup goes on without it.
  if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    echo "==> building llama-cpp-python from source, ~5 minutes (gguf extra: K-quants, llama.cpp checks)"
    if ! command -v c++ >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "    installing a C++ compiler (g++) for the build"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null 2>&1 \
        || echo "    (could not install g++; the build will likely fail)"
    fi
  fi
  # Portable build: GGML_NATIVE=OFF targets AVX2 instead of this CPU, so that a wheel pip caches here does not
  # die with "Illegal instruction" on another machine sharing the cache; --no-cache-dir keeps an older native
  # wheel from being reused.
  if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF ${CMAKE_ARGS:-}" "${PIP[@]}" install --no-cache-dir "llama-cpp-python>=0.3.30" \
      || echo "    (llama-cpp-python did not build)"
  fi
  "${PIP[@]}" install -e ".[dev,qlora,gguf,eval,serve,distributed]" || {
    echo "    (llama-cpp-python did not build; installed without the gguf extra, llama.cpp tests will be skipped)"
    "${PIP[@]}" install -e ".[dev,qlora,eval,serve,distributed]"
  }
  touch .venv/.tunesmith-installed
fi

# Go runs the Ollama template proof in tests/test_ollama_export.py (skipped without it). Optional: only
# when apt-get is there and we are root, and a failure here does not stop the setup.
if ! command -v go >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "==> installing Go (golang-go) for the Ollama template tests"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq golang-go >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq golang-go >/dev/null 2>&1; }; } \
    || echo "    (could not install golang-go; those tests will be skipped)"
fi
