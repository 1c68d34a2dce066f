"""How selective a null-space (InfLoRA-style) LoRA could be, before training one (benchmarks/null_space_lora.py).

For the inputs of q_proj and down_proj in layers 2, 10, 20 and 28 of the default model: the principal span of the
bundled replay prompts' token activations holding 90 / 99 / 99.9% of their energy (k directions), and the share
of energy outside it for routing prompts (60 training rows), the forgetting probes and the held-out general
questions. Prints one line per input.

    .venv/bin/python benchmarks/null_space_energy.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (2, 10, 20, 28)
INPUTS = ("self_attn.q_proj", "mlp.down_proj")


def prompts(path: str, key: str = "prompt", limit: int | None = None) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / path).read_text(encoding="utf-8").splitlines()]
    return [row["messages"][0]["content"] if key == "messages" else row[key] for row in rows][:limit]


def activations(model: Any, tokenizer: Any, texts: list[str]) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, linear) -> [tokens, in] inputs over every token of the chat-formatted prompts."""
    store: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for layer in LAYERS:
        for name in INPUTS:
            def hook(module: Any, inputs: tuple, output: Any, key: tuple[int, str] = (layer, name)) -> None:
                store.setdefault(key, []).append(inputs[0][0].detach())
            hooks.append(model.model.layers[layer].get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        for text in texts:
            chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
            model(**tokenizer(chat, return_tensors="pt", add_special_tokens=False))
    for handle in hooks:
        handle.remove()
    return {key: torch.cat(value) for key, value in store.items()}


def share_outside(x: torch.Tensor, span: torch.Tensor) -> float:
    return float(((x - x @ span @ span.T) ** 2).sum() / (x**2).sum())


def main() -> None:
    from tunesmith.config import Recipe
    from tunesmith.models import load_model, load_tokenizer, resolve_model_source

    model_dir = resolve_model_source(Recipe(data={"train": "x.jsonl"}).model.source)
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, torch.float32, "cpu").eval()
    general = activations(model, tokenizer, prompts("src/tunesmith/data/replay/general.jsonl"))
    others = {"routing": activations(model, tokenizer, prompts("examples/data/routing/train.jsonl", "messages", 60)),
              "probes": activations(model, tokenizer, prompts("src/tunesmith/eval/probes/general.jsonl")),
              "held-out": activations(model, tokenizer, prompts("benchmarks/data/general_heldout.jsonl"))}
    for key, x in general.items():
        values, vectors = torch.linalg.eigh(x.T @ x / len(x))
        values, vectors = values.flip(0), vectors.flip(1)
        cumulative = values.cumsum(0) / values.sum()
        row = [f"layer {key[0]:>2} {key[1]:<16} in {x.shape[1]}"]
        for energy in (0.9, 0.99, 0.999):
            k = int((cumulative < energy).sum()) + 1
            outside = ", ".join(f"{name} {share_outside(acts[key], vectors[:, :k]):.4f}"
                                for name, acts in others.items())
            row.append(f"{energy:g}: k={k}, outside {outside}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
