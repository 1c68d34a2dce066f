"""The replay anchor's passes over its rows packed into one row (train/replay.py `replay_logits`, today's code)
against the same rows as one right-padded batch with an attention mask (the code before) and against the rows one
by one without padding, side by side in one process on SmolLM2-135M with a LoRA r 16 on every linear layer (its B
drawn at random, so the KL is not zero).

Each measured draw is what a training step adds for the anchor in the first pass over the replay rows: the base's
forward pass (no gradients), the tuned model's forward pass and the backward of the KL. The draws are the
default stream's (`ReplayBatches`, 4 rows a draw as at ratio 0.5 and batch 8) over the bundled replay rows with
the answers shipped for the embedded model, encoded as training encodes them; the three ways take turns running
first. Reports seconds per draw, the padded share of the batched positions, how many draws packing chose, and
the largest relative difference between a KL value and the padded batch's. Writes
benchmarks/results/anchor_padding.json.

    .venv/bin/python benchmarks/anchor_padding.py [--draws 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "anchor_padding.json"


def padded_kl(model: Any, batch: tuple[Any, Any, Any]) -> Any:
    """The anchor as it ran before: one padded batch for the base and one for the tuned model."""
    import torch
    import torch.nn.functional as F

    ids, _, mask = batch
    scored = mask[:, 1:].bool()
    with torch.no_grad(), model.disable_adapter():
        base = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1][scored].float(), dim=-1)
    tuned = model(input_ids=ids, attention_mask=mask).logits[:, :-1][scored].float()
    return F.kl_div(F.log_softmax(tuned, dim=-1), base, log_target=True, reduction="batchmean")


def row_by_row_kl(model: Any, batch: tuple[Any, Any, Any]) -> Any:
    """The rows one by one, each cut to its real tokens (tried, not kept: no faster than the padded batch)."""
    import torch
    import torch.nn.functional as F

    ids, _, mask = batch
    rows = [ids[i : i + 1, :n] for i, n in enumerate(mask.sum(dim=1).tolist())]
    with torch.no_grad(), model.disable_adapter():
        base = torch.cat([F.log_softmax(model(input_ids=row).logits[0, :-1].float(), dim=-1) for row in rows])
    tuned = torch.cat([model(input_ids=row).logits[0, :-1].float() for row in rows])
    return F.kl_div(F.log_softmax(tuned, dim=-1), base, log_target=True, reduction="batchmean")


def replay_examples(tokenizer: Any) -> list[dict[str, list[int]]]:
    from tunesmith.data.replay import as_messages, shipped_answers
    from tunesmith.data.template import encode_split

    answers = shipped_answers("smollm2-135m-instruct", 160)
    rows = [as_messages(prompt, answer) for prompt, answer in answers.items() if answer is not None]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encode_split(tokenizer, rows, 512).examples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=16)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from tunesmith.models import load_model, resolve_model_source
    from tunesmith.train.replay import ReplayBatches, anchor_kl, base_log_probs, packed_replay

    source = resolve_model_source("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    model = get_peft_model(load_model(source, torch.float32, "cpu"),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    model.train()
    replay = ReplayBatches(replay_examples(tokenizer), 4, tokenizer.pad_token_id, seed=0)
    ways = {"padded batch": lambda batch: padded_kl(model, batch),
            "row by row": lambda batch: row_by_row_kl(model, batch),
            "packed (tunesmith)": lambda batch: anchor_kl(model, batch, base_log_probs(model, model, batch))}
    seconds = dict.fromkeys(ways, 0.0)
    real = positions = packed = 0
    worst = 0.0
    for draw in range(args.draws + 1):  # draw 0 warms up
        batch = replay.at(draw, "cpu")
        packed += bool(draw) and packed_replay(model, batch)
        order = list(ways)[draw % 3:] + list(ways)[:draw % 3]
        kls = {}
        for name in order:
            model.zero_grad()
            started = time.perf_counter()
            kl = ways[name](batch)
            kl.backward()
            if draw:
                seconds[name] += time.perf_counter() - started
            kls[name] = kl.item()
        if draw:
            real, positions = real + int(batch[2].sum()), positions + batch[2].numel()
            worst = max(worst, *(abs(kls[n] - kls["padded batch"]) / kls["padded batch"] for n in kls))
    per_draw = {name: round(total / args.draws, 3) for name, total in seconds.items()}
    result = {"draws": args.draws, "rows_per_draw": 4, "padded_share": round(1 - real / positions, 3),
              "seconds_per_draw": per_draw,
              "packed_speedup": round(per_draw["padded batch"] / per_draw["packed (tunesmith)"], 2),
              "packed_draws": packed,
              "largest_relative_kl_difference": worst, "threads": torch.get_num_threads()}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
