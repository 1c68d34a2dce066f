"""How fast could one epoch of the spread rows train on this CPU with PyTorch's kernels? A lower bound from the
kernels alone, beside trl-expert's measured time / 3 (issue 15's target) and tunesmith's one-row passes.

For each of the benchmark's 24 spread rows (`tunesmith.bench.spread_rows`, seed 0, SmolLM2's chat template), at
SmolLM2-135M's shapes (30 layers, hidden 576, 9 query and 3 key/value heads of 64, MLP 1,536):
- attention: PyTorch's SDPA (the flash kernel for fp32 on a CPU, as transformers calls it: key and value repeated
  to the query's heads, causal), forward and backward, 30 times;
- the frozen linears in bf16 (as tunesmith runs them on a CPU with fast bf16): each of the 7 linears' forward
  product and its input-gradient product, 30 times, with no cast, no adapter and nothing else, timed on 1,024
  tokens at once (a micro-batch's budget, where these products run fastest) and counted per token;
- the measured pass: tunesmith's one-row training step on the same row (fused LoRA r 16 on every linear, frozen
  linears in bf16, the answer's tokens scored), forward and backward.
Each the fastest of 2 timings after a warm-up. The kernels' sum is what no implementation on these kernels can
beat: it leaves out the norms, rotary embeddings, activations, casts, the adapter, the LM head, the optimizer and
the replay anchor. trl-expert (micro-batches of one packed row, its answer to the whole batch not fitting 24 GB) trains
the same 24 rows for one epoch in the same invocation first (`tunesmith.bench.run_benchmark`, its own subprocess).
Writes benchmarks/results/spread_bound.json.

    .venv/bin/python benchmarks/spread_bound.py
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).parent / "results"
EXPERT = "trl-expert-micro-1"
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP = 30, 576, 9, 3, 64, 1536
LINEARS = ((HIDDEN, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HIDDEN),
           (MLP, HIDDEN), (MLP, HIDDEN), (HIDDEN, MLP))  # (out, in): q, k, v, o, gate, up, down
MICRO_BATCH_TOKENS = 1024


def fastest(work: Callable[[], object], timed: int = 2) -> float:
    """Seconds of the fastest of `timed` calls of `work` after one warm-up."""
    work()
    best = float("inf")
    for _ in range(timed):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def attention_seconds(length: int) -> float:
    """SDPA forward and backward over one row of `length` tokens, all layers."""
    import torch
    import torch.nn.functional as F

    query = torch.randn(1, HEADS, length, HEAD_DIM, requires_grad=True)
    key = torch.randn(1, KV_HEADS, length, HEAD_DIM, requires_grad=True)
    value = torch.randn(1, KV_HEADS, length, HEAD_DIM, requires_grad=True)
    grad = torch.randn(1, HEADS, length, HEAD_DIM)
    repeat = HEADS // KV_HEADS

    def one_layer() -> None:
        out = F.scaled_dot_product_attention(query, key.repeat_interleave(repeat, 1),
                                             value.repeat_interleave(repeat, 1), is_causal=True)
        out.backward(grad)

    return LAYERS * fastest(one_layer)


def linear_seconds(length: int) -> float:
    """The bf16 frozen linears' forward and input-gradient products over one row of `length` tokens, all layers."""
    import torch

    weights = [torch.randn(out, inp).bfloat16() for out, inp in LINEARS]
    inputs = [torch.randn(length, inp).bfloat16() for _, inp in LINEARS]
    grads = [torch.randn(length, out).bfloat16() for out, _ in LINEARS]

    def one_layer() -> None:
        for weight, x, grad in zip(weights, inputs, grads, strict=True):
            torch.mm(x, weight.t())
            torch.mm(grad, weight)

    return LAYERS * fastest(one_layer)


def row_lengths() -> list[int]:
    """Token counts of the benchmark's 24 spread rows under SmolLM2's chat template."""
    from tunesmith.bench import spread_rows
    from tunesmith.models import resolve_model_source
    from tunesmith.models.loading import load_tokenizer

    tokenizer = load_tokenizer(resolve_model_source("smollm2-135m-instruct"))
    return [len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
            for row in spread_rows(24, seed=0)]


def main() -> None:
    import torch
    from lora_step import answer_batch, fastest_step, lora_smollm2

    from tunesmith.bench import run_benchmark
    from tunesmith.train.frozen_matmuls import cast_frozen_linears
    from tunesmith.train.fused_lora import fuse_lora_linears
    from tunesmith.train.upstream import keep_freed_blocks_for_reuse, score_only_labelled_positions

    expert = run_benchmark(datasets=("spread",), variants=(EXPERT,))["datasets"]["spread"]["variants"][EXPERT]
    keep_freed_blocks_for_reuse()
    torch.manual_seed(0)
    lengths = row_lengths()
    score_only_labelled_positions()
    model = lora_smollm2()
    cast_frozen_linears(model)
    fuse_lora_linears(model)
    model.train()
    rows = []
    linears_per_token = linear_seconds(MICRO_BATCH_TOKENS) / MICRO_BATCH_TOKENS
    for length in sorted(lengths):
        attention, linears = attention_seconds(length), linears_per_token * length
        measured, _ = fastest_step(model, answer_batch(1, length, 4), timed=2)
        rows.append({"tokens": length, "attention_s": round(attention, 4), "linears_s": round(linears, 4),
                     "pass_s": round(measured, 4)})
        print(f"{length:5d} tokens: attention {attention:.3f} s, bf16 linears {linears:.3f} s, "
              f"tunesmith's pass {measured:.3f} s", flush=True)
    figures = {
        "tokens": sum(lengths),
        "attention_s": round(sum(r["attention_s"] for r in rows), 2),
        "linears_s": round(sum(r["linears_s"] for r in rows), 2),
        "passes_s": round(sum(r["pass_s"] for r in rows), 2),
        "trl_expert_s": expert["seconds"],
    }
    figures["kernels_s"] = round(figures["attention_s"] + figures["linears_s"], 2)
    figures["target_s"] = round(figures["trl_expert_s"] / 3, 2)
    print(f"{figures['tokens']} tokens: kernels alone {figures['kernels_s']} s (attention {figures['attention_s']}, "
          f"bf16 linears {figures['linears_s']}); tunesmith's one-row passes {figures['passes_s']} s; "
          f"3x trl-expert needs the epoch in {figures['target_s']} s ({figures['trl_expert_s']} / 3)")
    (RESULTS / "spread_bound.json").write_text(json.dumps({"summary": figures, "rows": rows}, indent=2) + "\n",
                                               encoding="utf-8")


if __name__ == "__main__":
    main()
