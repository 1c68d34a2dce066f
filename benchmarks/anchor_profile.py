"""Where a replay-anchor draw spends its time: the tuned side (forward, KL, backward) of 8 draws of the default
stream (4 bundled replay rows a draw, packed) on SmolLM2-135M with a LoRA r 16 on every linear layer, the base's
log-probabilities computed beforehand; then torch.profiler over 3 draws, sorted by self CPU time. The README's
1.65 s -> 1.53 s per draw (`logits_to_keep` on packed rows) is the profiler's total over 3 draws before and after.

    .venv/bin/python benchmarks/anchor_profile.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def lora_smollm2():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from tunesmith.models import load_model, resolve_model_source

    source = resolve_model_source("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = get_peft_model(load_model(source, torch.float32, "cpu"),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # a trained-looking B, so that the KL is not zero
                parameter.normal_(0, 0.01)
    return model.train(), AutoTokenizer.from_pretrained(source)


def main() -> None:
    import torch
    import torch.nn.functional as F
    from anchor_padding import replay_examples

    from tunesmith.train.replay import ReplayBatches, anchor_kl, base_log_probs, replay_logits

    model, tokenizer = lora_smollm2()
    replay = ReplayBatches(replay_examples(tokenizer), 4, tokenizer.pad_token_id, seed=0)
    references = {draw: base_log_probs(model, model, replay.at(draw, "cpu")) for draw in range(9)}
    parts = {"forward": 0.0, "kl": 0.0, "backward": 0.0}
    for draw in range(9):  # draw 0 warms up
        batch = replay.at(draw, "cpu")
        model.zero_grad()
        began = time.perf_counter()
        logits = replay_logits(model, batch).float()
        forward_done = time.perf_counter()
        kl = F.kl_div(F.log_softmax(logits, dim=-1), references[draw], log_target=True, reduction="batchmean")
        kl_done = time.perf_counter()
        kl.backward()
        if draw:
            parts["forward"] += forward_done - began
            parts["kl"] += kl_done - forward_done
            parts["backward"] += time.perf_counter() - kl_done
    tokens = sum(int(replay.at(draw, "cpu")[2].sum()) for draw in range(1, 9)) / 8
    print({name: round(seconds / 8, 3) for name, seconds in parts.items()}, "tokens a draw", tokens)
    with torch.profiler.profile() as profile:
        for draw in range(1, 4):
            model.zero_grad()
            anchor_kl(model, replay.at(draw, "cpu"), references[draw]).backward()
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
