"""Make the embedded model's own answers to the bundled replay prompts, shipped so that a first run skips them.

`data.replay` (on by default for SFT) needs the base model's greedy answers to the general prompts it keeps the
tuned model close to (src/tunesmith/data/replay/general.jsonl). Computing the 226 takes ~220 s on 2 CPU cores, once
per base; for the embedded default model they are shipped in src/tunesmith/data/replay/answers/, made by this
script with the same code training uses (`tunesmith.train.replay.base_answers`: fp32, greedy, 160 new tokens at
most, unfinished answers kept as null); the answers already shipped are kept and only new prompts are asked.
Training uses them only for that model unpacked by tunesmith and loaded in fp32; the anchor's targets are the base's
live next-token distributions either way, the answers only say which text the anchor is computed on.

Usage (needs the installed tunesmith and the embedded model)::

    .venv/bin/python examples/data/make_replay_answers.py [--model smollm2-135m-instruct]
"""

import argparse
import json

import torch

from tunesmith.data.replay import BUNDLED_REPLAY, SHIPPED_ANSWERS, shipped_answers
from tunesmith.models import load_model, load_tokenizer, resolve_model_source
from tunesmith.train.replay import base_answers

MAX_NEW_TOKENS = 160  # data.replay.max_new_tokens' default
BATCH_SIZE = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="an embedded model's name")
    name = parser.parse_args().model
    model_dir = resolve_model_source(name)
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, dtype=torch.float32, device="cpu")
    prompts = [json.loads(line)["prompt"] for line in BUNDLED_REPLAY.read_text(encoding="utf-8").splitlines()]
    known = shipped_answers(name, MAX_NEW_TOKENS)  # kept: the prompts already answered are not asked again
    asked = [prompt for prompt in prompts if prompt not in known]
    known.update(zip(asked, base_answers(model, tokenizer, asked, MAX_NEW_TOKENS, BATCH_SIZE), strict=True))
    answers = {prompt: known[prompt] for prompt in prompts}
    shipped = {"model": name, "max_new_tokens": MAX_NEW_TOKENS, "dtype": str(model.dtype),
               "made_by": "examples/data/make_replay_answers.py", "answers": answers}
    target = SHIPPED_ANSWERS / f"{name}.json"
    target.write_text(json.dumps(shipped, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    unfinished = sum(answer is None for answer in answers.values())
    print(f"wrote {len(answers)} answers ({len(asked)} asked now, {unfinished} unfinished) to {target}")


if __name__ == "__main__":
    main()
