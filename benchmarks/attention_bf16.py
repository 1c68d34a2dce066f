"""Would attention in bf16 pay on a CPU, beside the frozen base's bf16 linears? One SmolLM2 LoRA step (r 16, every
linear, the frozen linears in bf16 as `training.precision: auto` runs them on a CPU with fast bf16), with PyTorch's
SDPA in fp32 (as trained) and with its query, key and value cast to bf16 (registered as a transformers attention
function), on one row of 1,000 tokens and on 8 rows of 112. Each way in its own subprocess, the fastest of three
timed steps after a warm-up, and the LoRA gradients' relative error against the fp32 attention's. A profile of the
1,000-token step put 29% of its time in SDPA's forward and backward, hence the question. Prints one line per case
and writes benchmarks/results/attention_bf16.json.

    .venv/bin/python benchmarks/attention_bf16.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).parent / "results" / "attention_bf16.json"
CASES = ((1000, 1), (112, 8))  # (tokens a row, rows)
ANSWER = 30


def step(way: str, length: int, rows: int, grads_file: Path) -> dict[str, float]:
    import torch
    import trl.trainer.utils as trl_utils
    from lora_step import answer_batch, fastest_step, lora_smollm2, save_grads
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tunesmith.models import load_model, resolve_model_source
    from tunesmith.train.frozen_matmuls import cast_frozen_linears
    from tunesmith.train.upstream import score_only_labelled_positions

    def sdpa_bf16(module, query, key, value, attention_mask, **kwargs):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(torch.bfloat16)
        out, weights = sdpa_attention_forward(module, query.bfloat16(), key.bfloat16(), value.bfloat16(),
                                              attention_mask, **kwargs)
        return out.to(query.dtype), weights

    AttentionInterface.register("sdpa_bf16", sdpa_bf16)
    score_only_labelled_positions()
    model = load_model(resolve_model_source("smollm2-135m-instruct"))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = lora_smollm2(model)
    cast_frozen_linears(model)
    if way == "attention-bf16":
        model.base_model.model.config._attn_implementation = "sdpa_bf16"
    model.train()
    best, loss = fastest_step(model, answer_batch(rows, length, ANSWER), timed=3)
    save_grads(model, grads_file)
    return {"step_s": round(best, 3), "loss": round(loss, 5)}


def main() -> None:
    from lora_step import as_worker, run_ways

    if as_worker(step):
        return
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for length, rows in CASES:
            case = run_ways(__file__, ("sdpa-fp32", "attention-bf16"), length, rows, Path(tmp))
            reference, other = (torch.load(Path(tmp) / f"{w}-{length}.pt") for w in ("sdpa-fp32", "attention-bf16"))
            case["attention-bf16"]["grad_relative_error"] = round(((other - reference).norm() / reference.norm())
                                                                  .item(), 4)
            case["speedup"] = round(case["sdpa-fp32"]["step_s"] / case["attention-bf16"]["step_s"], 2)
            results[f"{rows}x{length}"] = case
            print(f"{rows} x {length} tokens: fp32 SDPA {case['sdpa-fp32']['step_s']} s, bf16 attention "
                  f"{case['attention-bf16']['step_s']} s ({case['speedup']}x), LoRA grads "
                  f"{case['attention-bf16']['grad_relative_error']:.1%} from fp32's", flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
