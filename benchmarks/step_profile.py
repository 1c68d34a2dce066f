"""Where a CPU training step goes: SmolLM2-135M, LoRA r 16 on every linear, frozen linears in bf16, fused LoRA layers
(the defaults on a CPU with fast bf16), the last 30 tokens of each row carrying loss (scored only there).

1. One-row steps of 40, 200 and 1,000 tokens (fastest of three after a warm-up): a pass's fixed cost, which
   `train/micro_batches.py` saves by merging short rows.
2. torch.profiler over two steps of the 1,000-token row: the share of SDPA's attention (forward and backward) in the
   self CPU time, and each op group's seconds a step.
Writes benchmarks/results/step_profile.json.

    .venv/bin/python benchmarks/step_profile.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).parent / "results" / "step_profile.json"
LENGTHS = (40, 200, 1000)
ANSWER = 30


def main() -> None:
    from lora_step import answer_batch, fastest_step, lora_smollm2
    from torch.profiler import ProfilerActivity, profile

    from tunesmith.train.frozen_matmuls import cast_frozen_linears
    from tunesmith.train.fused_lora import fuse_lora_linears
    from tunesmith.train.upstream import score_only_labelled_positions

    score_only_labelled_positions()
    model = lora_smollm2()
    cast_frozen_linears(model)
    fuse_lora_linears(model)
    model.train()
    steps = {}
    for length in LENGTHS:
        seconds, _ = fastest_step(model, answer_batch(1, length, ANSWER), timed=3)
        steps[length] = round(seconds, 3)
        print(f"one row of {length} tokens: {seconds:.3f} s a step", flush=True)
    batch = answer_batch(1, LENGTHS[-1], ANSWER)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            model.zero_grad()
            model(**batch).loss.backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    groups = {e.key: round(e.self_cpu_time_total / 2e6, 3) for e in top}  # µs over two steps -> s a step
    share = attention / total
    print(f"{LENGTHS[-1]}-token step: attention {share:.0%} of self CPU time; top ops (s a step): {groups}")
    RESULTS.write_text(json.dumps({"one_row_step_s": steps, "attention_share": round(share, 3),
                                   "profiled_step_s": round(total / 2e6, 3), "top_ops_s_per_step": groups},
                                  indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
