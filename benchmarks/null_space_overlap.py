"""Where the answer is decided, do a task's prompts use other input directions than the probes?

For a run trained with `data.replay.null_space` (README, "Keeping what the base could do"): the run's replay rows
give each LoRA layer's closed directions, as training found them (`train/null_space.py`, the run's energy). At the
last prompt token (the position whose next token starts the answer), with the adapter off, this prints the mean
share of each input kind's energy left in the open directions, for the run's held-out task prompts, the bundled
probes and the replay prompts themselves. Then, for nine layer inputs, the share of the task's and the probes'
answer-position energy inside the k directions where the task's inputs (all tokens of 128 training rows) have the
most energy relative to the replay rows' (generalized eigenvectors; the `discriminative_k32` trial in
benchmarks/results/defaults.json kept A within k = 32 of them).

    .venv/bin/python benchmarks/null_space_overlap.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "src/tunesmith/eval/probes/general.jsonl"
KS = (4, 16, 32, 64)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    from tunesmith.data.template import render

    chat = render(tokenizer, [{"role": "user", "content": text}], generation_prompt=True)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def last_position_inputs(model: Any, layers: dict[str, Any], prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """layer name -> [prompts, in_features]: each layer's input at each prompt's last token."""
    store: dict[str, list[torch.Tensor]] = {}
    handles = [module.register_forward_pre_hook(
        lambda module, args, name=name: store.setdefault(name, []).append(args[0][0, -1].float()))
        for name, module in layers.items()]
    try:
        for ids in prompts:
            model(input_ids=torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.stack(rows) for name, rows in store.items()}


def open_share(x: torch.Tensor, basis: torch.Tensor, inside: bool) -> torch.Tensor:
    """Per row of x [n, in]: the share of its energy outside the closed directions."""
    along = ((x @ basis) ** 2).sum(-1) / (x**2).sum(-1)
    return 1 - along if inside else along


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    from peft import PeftModel

    from tunesmith.data.template import encode_split
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.null_space import input_moments, lora_layers, principal_basis

    run = json.loads((args.run / "run.json").read_text(encoding="utf-8"))
    null_space = json.loads((args.run / "train.json").read_text(encoding="utf-8")).get("replay", {}).get("null_space")
    if not null_space or "energy" not in null_space:
        raise SystemExit(f"{args.run} was not trained with data.replay.null_space (train.json has no "
                         "replay.null_space.energy): train one with --set data.replay.null_space=0.95")
    energy = null_space["energy"]
    tokenizer = load_tokenizer(args.run / "adapter")
    base = load_model(Path(run["train"]["base_model"]["path"]), torch.float32, "cpu").eval()
    model = PeftModel.from_pretrained(base, args.run / "adapter")
    layers = lora_layers(model)
    pad = tokenizer.pad_token_id or 0
    replay = jsonl(args.run / run["train"]["replay"]["path"])
    general = [{"input_ids": e.input_ids} for e in encode_split(tokenizer, replay, 4096).examples]
    task_rows = jsonl(args.run / run["data"]["train"]["path"])[:128]
    task = [{"input_ids": e.input_ids} for e in encode_split(tokenizer, task_rows, 4096).examples]
    prompts = {"task (held-out prompts)": [prompt_ids(tokenizer, r["messages"][0]["content"])
                                           for r in jsonl(args.run / run["data"]["eval"]["path"])],
               "probes": [prompt_ids(tokenizer, p["prompt"]) for p in jsonl(PROBES)],
               "replay prompts": [prompt_ids(tokenizer, r["messages"][0]["content"]) for r in replay]}
    with model.disable_adapter():
        moments, group, tokens = input_moments(model, layers, general, pad)
        task_moments, _, task_tokens = input_moments(model, layers, task, pad)
        inputs = {kind: last_position_inputs(model, layers, ids) for kind, ids in prompts.items()}
    bases = {name: principal_basis(moment, energy) for name, moment in moments.items()}
    print(f"null space {energy:g} from {len(general)} replay rows ({tokens} tokens); open share at the answer "
          "position, mean over layers of each kind:")
    for kind, by_layer in inputs.items():
        shares: dict[str, list[float]] = {}
        for name, x in by_layer.items():
            basis, inside, _ = bases[group[name]]
            shares.setdefault(name.rsplit(".", 1)[-1], []).append(float(open_share(x, basis, inside).mean()))
        print(f"  {kind:<24} " + ", ".join(f"{linear} {statistics.mean(v):.3f}" for linear, v in shares.items()))
    print("share of answer-position energy in the top-k task/replay generalized eigenvectors (task, probes):")
    for name in [n for n in layers if any(f".{i}." in n for i in (5, 15, 25))
                 and n.rsplit(".", 1)[-1] in ("q_proj", "o_proj", "down_proj")]:
        g = moments[group[name]].double() / tokens
        g = g + 1e-3 * g.diagonal().mean() * torch.eye(g.shape[0], dtype=torch.double)
        inverse = torch.linalg.inv(torch.linalg.cholesky(g))
        _, vectors = torch.linalg.eigh(inverse @ (task_moments[group[name]].double() / task_tokens) @ inverse.T)
        directions = inverse.T @ vectors.flip(1)
        cells = []
        for k in KS:
            q, _ = torch.linalg.qr(directions[:, :k])
            within = [float(((x.double() @ q) ** 2).sum() / (x.double() ** 2).sum())
                      for x in (inputs["task (held-out prompts)"][name], inputs["probes"][name])]
            cells.append(f"k={k}: {within[0]:.3f} / {within[1]:.4f}")
        print(f"  {name.removeprefix('base_model.model.'):<40} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
