"""Check a GGUF the way it will be used: load it in llama.cpp and compare its predictions with transformers.

Both engines are fed the same token ids (teacher forcing) and we count the positions where they pick
the same next token. The ids are a fixed set of chat prompts followed by the reference model's own
greedy answer, so the count covers the positions that decide what the exported model says, and a
disagreement early on cannot make the rest of a sequence incomparable (as it would with free generation).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import TunesmithError

GGUF_EXTRA_HINT = "Install llama-cpp-python with: pip install 'tunesmith[gguf]' (builds llama.cpp, ~5 minutes)."
VERIFY_PROMPTS = [
    "2 large pepperoni pizzas and a cola to 12 Main St, please.",
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into Spanish.",
    "Reply with a JSON object with keys name and age for a 30 year old called Ana.",
    "Explain in one sentence what a fine-tuned model is.",
    "How many legs does a spider have?",
]
ANSWER_TOKENS = 32  # greedy tokens the reference model adds to each prompt
TASK_PROMPTS = 8  # of the run's own held-out conversations, beside VERIFY_PROMPTS
TASK_PROMPT_TOKENS = 512  # longer ones are left out: a batch padded to a 4k-token chat would take minutes
Conversation = tuple[list[dict[str, Any]], list[dict[str, Any]] | None]  # messages before the answer, and tools
# Minimum top-1 agreement per type; other types are reported only. A conversion bug (a wrong Q/K
# permutation, tokenizer or RoPE setting) costs far more than these margins; rounding only flips
# near-ties, where fp32's two best logits are within ~0.3 of each other. Measured on the quickstart's
# tuned SmolLM2-135M (untuned in brackets): F32 and F16 100% (100%), BF16 98.4% (99.2%), Q8_0 96.8% (95.4%).
# BF16 keeps 8 significant bits and llama.cpp also rounds the activations to BF16, so it is held to 97%
# (about twice the disagreement measured), not the 99% of F32 and F16. Q8_0 likewise rounds
# weights and activations to 8 bits; its bytes are identical to llama.cpp's own Q8_0 quantizer's.
THRESHOLDS = {"F32": 0.99, "F16": 0.99, "BF16": 0.97, "Q8_0": 0.95}


@dataclass(frozen=True)
class Verification:
    """How closely llama.cpp running the GGUF follows transformers running the checkpoint."""

    quant: str
    positions: int  # teacher-forced positions compared
    agreement: float  # fraction of them where both engines pick the same next token
    answer_agreement: float  # the same, over the answer positions only
    threshold: float | None  # None: reported only
    tokenization_matches: int  # prompts llama.cpp tokenizes to the same ids as transformers
    prompts: int
    task_prompts: int = 0  # of `prompts`, the run's own held-out conversations (system prompt, turns, its template)
    task_agreement: float | None = None  # the agreement over those alone (reported; not held to a threshold)

    @property
    def passed(self) -> bool:
        return self.threshold is None or self.agreement >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        """As exports/manifest.json records it: `passed` is null for a type with no threshold (reported only)."""
        return {**asdict(self), "passed": self.passed if self.threshold is not None else None}

    def summary(self) -> str:
        verdict = ("reported only" if self.threshold is None
                   else f"{'passes' if self.passed else 'FAILS'} the {self.threshold:.0%} threshold")
        task = (f"; {self.task_agreement:.1%} on {self.task_prompts} of the run's own held-out prompts (reported)"
                if self.task_agreement is not None else "")
        return (f"llama.cpp vs transformers ({self.quant}): top-1 agreement {self.agreement:.1%} over "
                f"{self.positions} positions ({self.answer_agreement:.1%} on answers), {verdict}{task}; "
                f"tokenization identical for {self.tokenization_matches}/{self.prompts} prompts")


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def require_llama_cpp(what: str) -> Any:
    """The llama_cpp module, or an error naming the extra that installs it."""
    if not llama_cpp_available():
        raise TunesmithError(f"{what} needs llama-cpp-python, which is not installed.", GGUF_EXTRA_HINT)
    import llama_cpp

    return llama_cpp


@dataclass(frozen=True)
class Reference:
    """What transformers does on the prompt set: the ids both engines are fed and its next-token picks."""

    texts: list[str]  # prompts as the model sees them (chat template applied)
    sequences: list[list[int]]  # prompt ids followed by the greedy answer
    prompt_lengths: list[int]
    argmaxes: list[np.ndarray]  # transformers' top-1 next token at every position of each sequence
    add_special: bool  # the text needs the tokenizer's own BOS/EOS (no chat template supplies them)


def verify_gguf(gguf_path: Path, model_dir: Path, quant: str,
                conversations: list[Conversation] | None = None, lora_path: Path | None = None) -> Verification:
    """Compare the GGUF in llama.cpp with the fp32 checkpoint it was written from, on VERIFY_PROMPTS (`agreement`,
    held to THRESHOLDS, which were measured on them) and on `conversations` (the run's own held-out prompts: its
    system prompt, several turns, tools, rendered by the template it trained with; `task_agreement`, reported
    beside). Conversations over TASK_PROMPT_TOKENS are left out: the check stays seconds, whatever the data.
    `lora_path`: a GGUF LoRA llama.cpp applies to `gguf_path` (the base), compared with the merged checkpoint
    `model_dir` (what Ollama's ADAPTER and `llama-cli --lora` run)."""
    shown = Path(gguf_path).name + (f" + {Path(lora_path).name}" if lora_path else "")
    print(f"verifying {shown} in llama.cpp against transformers ...", file=sys.stderr)
    with torch_threads(compute_threads()):
        reference = reference_predictions(model_dir, conversations or [])
    got, tokenized = llama_cpp_predictions(Path(gguf_path), reference, lora_path)
    same = [e == g for e, g in zip(reference.argmaxes, got, strict=True)]
    answers = [s[n - 1:] for s, n in zip(same, reference.prompt_lengths, strict=True)]
    shared = shared_prefix_length(reference.sequences[:len(VERIFY_PROMPTS)])  # a default system prompt: once
    same = [same[0], *(s[shared:] for s in same[1:len(VERIFY_PROMPTS)]), *same[len(VERIFY_PROMPTS):]]
    prompt_ids = [seq[:n] for seq, n in zip(reference.sequences, reference.prompt_lengths, strict=True)]
    fixed, task = same[:len(VERIFY_PROMPTS)], same[len(VERIFY_PROMPTS):]
    fixed_answers = answers[:len(VERIFY_PROMPTS)]
    return Verification(
        quant=quant.upper(), positions=sum(len(s) for s in fixed),
        agreement=sum(int(s.sum()) for s in fixed) / sum(len(s) for s in fixed),
        answer_agreement=sum(int(a.sum()) for a in fixed_answers) / max(1, sum(len(a) for a in fixed_answers)),
        threshold=THRESHOLDS.get(quant.upper()),
        tokenization_matches=sum(a == b for a, b in zip(tokenized, prompt_ids, strict=True)),
        prompts=len(prompt_ids), task_prompts=len(task),
        task_agreement=sum(int(s.sum()) for s in task) / max(1, sum(len(s) for s in task)) if task else None)


def held_out_conversations(rows: list[dict[str, Any]] | None) -> list[Conversation]:
    """Up to TASK_PROMPTS of a run's saved held-out rows (`Run.eval_rows()`) as conversations to verify on: each
    row's messages before its last assistant turn, with its tools; rows of other shapes are left out."""
    conversations = []
    for row in rows or []:
        messages = row.get("messages") or []
        if len(messages) > 1 and messages[-1].get("role") == "assistant":
            conversations.append((messages[:-1], row.get("tools")))
    return conversations[:TASK_PROMPTS]


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading ids every sequence has in common (their predictions there are the same position)."""
    length = 0
    while all(len(s) > length and s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length


def reference_predictions(model_dir: Path, conversations: list[Conversation]) -> Reference:
    """Greedy answers to VERIFY_PROMPTS and `conversations` from the fp32 checkpoint, and its argmax at every
    position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    add_special = not tokenizer.chat_template
    texts = [prompt_text(tokenizer, [{"role": "user", "content": prompt}]) for prompt in VERIFY_PROMPTS]
    texts += [prompt_text(tokenizer, messages, tools) for messages, tools in conversations if not add_special]
    prompts = [tokenizer(text, add_special_tokens=add_special)["input_ids"] for text in texts]
    kept = [i for i, ids in enumerate(prompts) if i < len(VERIFY_PROMPTS) or len(ids) <= TASK_PROMPT_TOKENS]
    texts, prompts = [texts[i] for i in kept], [prompts[i] for i in kept]
    sequences = [ids + answer for ids, answer in zip(prompts, greedy_answers(model, tokenizer, texts, add_special),
                                                     strict=True)]
    with torch.no_grad():  # one unpadded pass per sequence: the logits llama.cpp is compared with
        argmaxes = [model(input_ids=torch.tensor([s])).logits[0].argmax(-1).numpy() for s in sequences]
    return Reference(texts, sequences, [len(ids) for ids in prompts], argmaxes, add_special)


def greedy_answers(model: Any, tokenizer: Any, texts: list[str], add_special: bool) -> list[list[int]]:
    """Up to ANSWER_TOKENS greedy tokens after each text, generated as one left-padded batch."""
    import torch

    batch = tokenizer(texts, add_special_tokens=add_special, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=ANSWER_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    eos = model.generation_config.eos_token_id
    stops = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    answers = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        answers.append(row[:end])  # up to and including the end-of-turn token
    return answers


def prompt_text(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The conversation as the model sees it before its answer: rendered with its chat template when it has one,
    else the last message's text."""
    if not tokenizer.chat_template:
        return str(messages[-1]["content"])
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         **({"tools": tools} if tools else {}))


def llama_cpp_predictions(gguf_path: Path, reference: Reference,
                          lora_path: Path | None = None) -> tuple[list[np.ndarray], list[list[int]]]:
    """llama.cpp's argmax at every position of each reference sequence (with the GGUF LoRA `lora_path` applied),
    and its own tokenization of each text."""
    llama_cpp = require_llama_cpp("Verifying a GGUF")
    n_ctx = max(len(s) for s in reference.sequences) + 8
    threads = compute_threads()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                          seed=0, n_threads=threads, n_threads_batch=threads,
                          lora_path=str(lora_path) if lora_path else None)
    try:
        argmaxes, tokenized = [], []
        for text, sequence in zip(reference.texts, reference.sequences, strict=True):
            tokenized.append(llm.tokenize(text.encode("utf-8"), add_bos=reference.add_special, special=True))
            llm.reset()
            llm.eval(sequence)
            argmaxes.append(np.asarray(llm.scores[: len(sequence)]).argmax(-1))
        return argmaxes, tokenized
    finally:
        llm.close()


def compute_threads() -> int:
    """Half the CPUs (about the physical cores) for both engines. Their worker threads spin while they wait
    for each other, so with more threads than free cores a short evaluation gets 10-50x slower (measured
    on a busy 2-CPU box: SmolLM2's reference answers took 12 s on one thread, 110 s on two)."""
    return max(1, (os.cpu_count() or 2) // 2)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set for a block and restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
