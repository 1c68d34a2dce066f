#!/usr/bin/env bash
# The GPU checks of issues 15 (training speed and memory on a GPU) and 21 (FSDP and DeepSpeed for real), as ONE
# run on a lent GPU machine, which is bare and offline: the Python packages its image lacks travel as wheels in
# .whl/ (pip download, see the device tool's README), SmolLM2's tokenizer in .gpu/tokenizer (the models are
# random-initialised there: benchmarks/random_llama.py). Results land in $OUT (default /tmp/gpu-out).
#
#   bash benchmarks/gpu_session.sh            # from the repository root, on the GPU machine
#
# Made here first (both folders listed in .git/info/exclude, then named in the device call's carry), 60 MB in all:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     trl datasets dill multiprocess pydantic pydantic-core annotated-types typing-inspection liger-kernel \
#     bitsandbytes hjson ftfy wcwidth datasketch peft          # what the image (2026-12: torch 2.11, transformers
#   DS_BUILD_OPS=0 .venv/bin/python -m pip wheel --no-deps --no-build-isolation deepspeed -w .whl   # 5.17) lacks
#   pip download --no-deps --python-version 3.12 -d .whl/fallback 'datasets==4.8.5'
#   mkdir -p .gpu/tokenizer && cp ~/.cache/tunesmith/models/smollm2-135m-instruct/{tokenizer.json,\
#     tokenizer_config.json,chat_template.jinja} .gpu/tokenizer/
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
  # datasets 5 needs pyarrow >= 24; where the image's is older, datasets 4.8 (pyarrow >= 21) stands in
  python3 -c "import datasets" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/fallback/*.whl
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi; python3 -c "import sys, torch, transformers, peft, trl, accelerate, datasets; print(sys.version);
print({m.__name__: m.__version__ for m in (torch, transformers, peft, trl, accelerate, datasets)})"
  python3 -c "import deepspeed, bitsandbytes; print(deepspeed.__version__, bitsandbytes.__version__)"
  python3 -c "import liger_kernel; print('liger ok')"; } > "$OUT/env.txt" 2>&1
echo "== env"; tail -4 "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: one check under its own time limit, its log in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local began=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - began)) s"; tail -25 "$OUT/$name.log"
}

# CHECKS=distributed or CHECKS=bench runs one half
if [[ ${CHECKS:-distributed,bench} == *distributed* ]]; then
step distributed "${DISTRIBUTED_SECONDS:-170}" python3 benchmarks/distributed_gpu.py --tokenizer .gpu/tokenizer \
  --strategies none,fsdp,deepspeed-zero3,deepspeed-zero2 --timeout 70 --out "$OUT/distributed_gpu.json"
fi
[[ ${CHECKS:-distributed,bench} == *bench* ]] || exit 0
step llama-1b 45 python3 benchmarks/random_llama.py --tokenizer .gpu/tokenizer --preset 1b --out /tmp/llama-1b
step bench-quickstart 230 python3 benchmarks/train_throughput.py --model /tmp/llama-1b --datasets quickstart \
  --rows 400 --variants trl-expert,tunesmith-no-replay,tunesmith,trl-expert-qlora,tunesmith-qlora,trl-expert-liger \
  --out "$OUT/train_throughput_gpu.json"
step bench-spread 90 python3 benchmarks/train_throughput.py --model /tmp/llama-1b --datasets spread \
  --spread-rows 96 --variants trl-expert,tunesmith-no-replay,tunesmith --out "$OUT/train_throughput_gpu_spread.json"
