"""Log-probability scoring batched by rows (before 2026-12-06) vs by a token budget, longest first (now).

Why: eval's perplexity (CPT), preference and probe scoring ran `eval.batch_size` rows per forward pass, so a batch of
20 long documents padded to the longest held fp32 logits of 20 x length x 49k vocabulary: a newcomer's CPT eval on
a 4 MB manual peaked at 6.7 GB, above training's 4.2 GB, and was silent for minutes. `sequence_logprobs` now sorts
the sequences longest first and caps each batch at LOGPROB_BATCH_TOKENS padded tokens (and batch_size rows).

Two kinds of text, each scored both ways in its own process (peak RSS is per process) on the embedded SmolLM2:
- `handbook`: the bundled CPT held-out paragraphs (examples/data/text/eval.jsonl; short, alike: developed on);
- `manual`: 40 generated documents of 50 to 1,400 words, long and short mixed (`manual_documents` below: the kind
  a user's own text is, held out).

    .venv/bin/python benchmarks/logprob_batching.py     # about 4 min on 2 idle CPU cores

Writes benchmarks/results/logprob_batching.json: per kind and mode, seconds, peak RSS, and the largest difference
of a sequence's summed log-probability between the modes.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "logprob_batching.json"
BATCH_SIZE = 20  # recipes/cpt.yaml's eval.batch_size
MAX_LENGTH = 2048
WORDS = [
    "the", "valve", "seal", "gasket", "pump", "housing", "filter", "torque", "wrench", "bolt", "thread", "pressure",
    "gauge", "reading", "manual", "inspect", "replace", "clean", "tighten", "loosen", "check", "record", "every",
    "month", "year", "hour", "before", "after", "during", "service", "warranty", "part", "number", "model",
    "serial", "spare", "kit", "oil", "grease", "water", "air", "flow", "rate", "level", "alarm",
]


def manual_documents(count: int = 40, seed: int = 0) -> list[str]:
    """Service-manual-like documents of 50 to 1,400 words: a few long ones among many short ones."""
    rng = random.Random(seed)
    lengths = [rng.choice([50, 80, 120, 200, 300]) for _ in range(count - 6)] + [900, 1000, 1100, 1200, 1300, 1400]
    rng.shuffle(lengths)
    documents = []
    for length in lengths:
        words = [rng.choice(WORDS) for _ in range(length)]
        sentences = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, length, 12)]
        documents.append(" ".join(sentences))
    return documents


def handbook_documents() -> list[str]:
    rows = (REPO / "examples" / "data" / "text" / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(row)["text"] for row in rows if row.strip()]


def score(kind: str, mode: str) -> dict:
    """In this process: encode `kind`'s documents and score them `mode`-wise; peak RSS and seconds."""
    import torch

    import tunesmith.eval.decoding as decoding
    from tunesmith.models import load_model, load_tokenizer, resolve_model_source

    torch.set_num_threads(2)
    model_dir = resolve_model_source("smollm2-135m-instruct")
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    texts = manual_documents() if kind == "manual" else handbook_documents()
    encoded = [decoding.encode_document(tokenizer, text, MAX_LENGTH) for text in texts]
    if mode == "rows":  # the old batching: batch_size rows in the given order, however long
        decoding.LOGPROB_BATCH_TOKENS = 10**9
        encoded_order = list(range(len(encoded)))
        decoding.sorted = lambda items, key=None: encoded_order  # type: ignore[attr-defined]  # keep file order
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with torch.no_grad():
        scores = decoding.sequence_logprobs(model, encoded, tokenizer.pad_token_id, BATCH_SIZE)
    return {"seconds": round(time.perf_counter() - started, 1), "documents": len(encoded),
            "tokens": sum(len(e["input_ids"]) for e in encoded),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "rss_before_scoring_gib": round(rss_before / 2**20, 2), "scores": scores}


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(score(sys.argv[1], sys.argv[2])))
        return
    results = {}
    for kind in ("handbook", "manual"):
        runs = {}
        for mode in ("rows", "token_budget"):
            out = subprocess.run([sys.executable, __file__, kind, mode], capture_output=True, text=True, check=True)
            runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(kind, mode, {k: v for k, v in runs[mode].items() if k != "scores"}, flush=True)
        differences = [abs(a[0] - b[0]) for a, b in zip(runs["rows"]["scores"], runs["token_budget"]["scores"],
                                                        strict=True)]
        results[kind] = {mode: {k: v for k, v in run.items() if k != "scores"} for mode, run in runs.items()}
        results[kind]["max_abs_logprob_difference"] = round(max(differences), 5)
        results[kind]["speedup"] = round(runs["rows"]["seconds"] / runs["token_budget"]["seconds"], 2)
    RESULTS.write_text(json.dumps({"batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, **results}, indent=2) + "\n",
                       encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
