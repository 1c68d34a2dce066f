"""A trained reward model as a scorer: (prompt, answer) -> one float. Used by `tunesmith eval` on reward runs
and by GRPO's `reward_model` reward.

Scoring sees exactly what training saw. TRL 1.16's RewardTrainer tokenizes a conversational pair as
`apply_chat_template(prompt + answer)` (no generation prompt) and a plain-text one as `prompt + answer + eos`,
pads on the right with the pad token, and the score head reads the last token that is not the pad token
(transformers' sequence-classification pooling). `encode_answer` reproduces that; a test pins it against the
trainer's own token ids.

A reward model is found from a `method.kind: reward` run directory (its base from the run's recipe), or from
the run's `adapter/` (base from the adapter's config) or `model/` folder (a whole fine-tuned model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.models import load_model, load_tokenizer, pick_device, resolve_model_source

HINT = "Pass a `method.kind: reward` run directory (what `tunesmith train` printed), or its adapter/ or model/ folder."


@dataclass
class RewardModel:
    """A loaded reward model and its tokenizer; `score` takes prompts and answers in the data's own shape."""

    model: Any
    tokenizer: Any
    batch_size: int = 8

    def score(self, prompts: list[Any], answers: list[Any]) -> list[float]:
        encoded = [encode_answer(self.tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
        return score_encoded(self.model, encoded, self.tokenizer.pad_token_id, self.batch_size)


def encode_answer(tokenizer: Any, prompt: str | list[dict], answer: str | list[dict],
                  tools: list[dict] | None = None) -> list[int]:
    """Token ids of prompt + answer as TRL's RewardTrainer builds them (see the module docstring)."""
    if isinstance(prompt, str):
        answer = answer if answer.endswith(tokenizer.eos_token) else answer + tokenizer.eos_token
        return tokenizer(text=prompt + answer)["input_ids"]
    return tokenizer.apply_chat_template(prompt + answer, tools=tools, tokenize=True, return_dict=True)["input_ids"]


def score_encoded(model: Any, encoded: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
    """The head's score of each token sequence, in batches padded on the right (as in training)."""
    scores: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            ids = torch.full((len(batch), max(map(len, batch))), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(batch):
                ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores += logits[:, 0].float().tolist()
    return scores


def load_reward_base(model_dir: Path, tokenizer: Any, device: str, seed: int) -> Any:
    """The base with a fresh score head, seeded so an untrained head is the same one on every load (the caller's
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_model(model_dir, torch.float32, device, task="SEQ_CLS")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def load_reward_model(path: str | Path, device: str | None = None, batch_size: int = 8) -> RewardModel:
    """Load the reward model at `path` (a run directory, its adapter/ or its model/ folder) for scoring."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    artifact, base = locate_reward_model(Path(path).expanduser())
    device = device or pick_device("auto")
    tokenizer = load_tokenizer(artifact)
    if base is None:  # a whole fine-tuned model: the head is in its own weights
        model = AutoModelForSequenceClassification.from_pretrained(artifact, dtype=torch.float32).to(device)
    else:
        model = PeftModel.from_pretrained(load_reward_base(base, tokenizer, device, seed=0), artifact)
    model.config.pad_token_id = tokenizer.pad_token_id
    return RewardModel(model.eval(), tokenizer, batch_size)


def locate_reward_model(path: Path) -> tuple[Path, Path | None]:
    """(the trained artifact, the base model directory it applies to, or None for a whole model)."""
    if not path.exists():
        raise TunesmithError(f"Reward model {path} does not exist.", HINT)
    if (path / "recipe.yaml").is_file():
        return run_artifact(path)
    if (path / "adapter_config.json").is_file():
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("task_type") != "SEQ_CLS":
            raise TunesmithError(f"{path} holds a {config.get('task_type')} adapter, not a reward model's (SEQ_CLS).",
                                 HINT)
        return path, resolve_model_source(config["base_model_name_or_path"])
    config_file = path / "config.json"
    if config_file.is_file() and is_reward_config(json.loads(config_file.read_text(encoding="utf-8"))):
        return path, None
    raise TunesmithError(f"{path} is not a reward model: no recipe.yaml, no SEQ_CLS adapter, no one-score model.", HINT)


def run_artifact(path: Path) -> tuple[Path, Path | None]:
    """A reward run's trained artifact and, for an adapter, the base run.json recorded."""
    from tunesmith.models.tuned import is_adapter, run_base_model
    from tunesmith.runs import open_run

    run = open_run(path)
    recipe = run.load_recipe()
    if recipe.method.kind != "reward":
        raise TunesmithError(f"{path} is a method.kind {recipe.method.kind} run, not a reward model.", HINT)
    artifact = run.trained_artifact()
    return (artifact, run_base_model(run)) if is_adapter(artifact) else (artifact, None)


def is_reward_config(config: dict[str, Any]) -> bool:
    """A saved one-score sequence classifier (transformers writes num_labels as its id2label)."""
    architectures = config.get("architectures") or []
    one_score = len(config.get("id2label") or {}) == 1
    return one_score and any(name.endswith("ForSequenceClassification") for name in architectures)
