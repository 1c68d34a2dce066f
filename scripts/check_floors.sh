#!/usr/bin/env bash
# Are pyproject.toml's lower bounds true? Installs the lowest versions they allow (uv's lowest-direct resolution) into
# a venv of its own, beside torch 2.13 (other torch releases are multi-GB downloads, so torch's floor is not checked),
# and runs the test files that touch each library. ~10 min on 2 cores. Usage: bash scripts/check_floors.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/tunesmith-floors}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 uv
# the editable install must not re-point the project's own .venv: it goes into this venv only
"$venv/bin/uv" pip install -q --python "$venv/bin/python" --resolution lowest-direct "torch==2.13.0" -e ".[dev,serve]"
# llama-cpp-python has no wheel (a 5-minute build): the project's own build is copied in, where it has one
built=.venv/lib/python3.11/site-packages
if [ -d "$built/llama_cpp" ]; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp -r "$built/llama_cpp" "$built"/llama_cpp_python-*.dist-info "$site/"
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" diskcache jinja2
fi
"$venv/bin/uv" pip list --python "$venv/bin/python" 2>/dev/null | grep -i -E "^(transformers|peft|trl|datasets|accelerate|huggingface.hub|tokenizers|pydantic|typer|fastapi|starlette|openai) "
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
"$venv/bin/python" -m pytest -q -p no:warnings -m "not slow" --basetemp "$venv/pytest" -o cache_dir="$venv/pytest_cache" \
    tests/test_pipeline.py tests/test_serve.py tests/test_train_speed.py tests/test_eval_metrics.py \
    tests/test_export_stage.py tests/test_gguf_verify.py tests/test_data_formats.py tests/test_real_templates.py
