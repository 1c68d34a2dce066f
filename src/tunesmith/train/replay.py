"""Replay rows for supervised training (`data.replay`): general prompts answered by the base model itself.

Before the trainer wraps the model, the base answers the sampled prompts greedily; answers it does not finish
within `max_new_tokens` are left out (training them cut would teach stopping mid-sentence). The rows are
saved as data/replay.jsonl and recorded in run.json's train stage. With `data.replay.loss: kl` every training
step adds the KL anchor on a few of them (`anchored`); with `sft` they join the training rows.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import REFERENCE_CACHE_ACCELERATOR_BYTES, REFERENCE_CACHE_SHARE, Recipe
from tunesmith.data.replay import as_messages, load_replay_prompts, pick_replay, replay_count, shipped_answers
from tunesmith.data.template import IGNORE_INDEX, encode_split, render
from tunesmith.doctor.accelerator import available_memory
from tunesmith.manifest import RowsFile
from tunesmith.models.generation import generate_from_prompts, pad_right
from tunesmith.models.home import model_fingerprint, tunesmith_home
from tunesmith.models.loading import load_tokenizer
from tunesmith.models.registry import EMBEDDED, cached_model_dir
from tunesmith.runs import Run, atomic_write_json, save_rows
from tunesmith.train.distributed import is_main_process


@dataclass
class Replay:
    """The replay rows as trained, their file in the run, and what data.json / train.json say about them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    file: RowsFile | None = None
    report: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, list[int]]] = field(default_factory=list)  # rows encoded as training encodes them


def build_replay(recipe: Recipe, run: Run, model: Any, tokenizer: Any, model_dir: Path, train_rows: int) -> Replay:
    """Sample round(ratio x train_rows) replay prompts, answer those without an answer with `model` (the base from
    `model_dir`, before any adapter; answers are cached per base under $TUNESMITH_HOME/replay), and save the
    finished rows. An empty Replay when data.replay.ratio is 0."""
    settings = recipe.data.replay
    if settings.ratio == 0:
        return Replay()
    if recipe.model.chat_template is not None and not load_tokenizer(model_dir).chat_template:
        why = ("off: the base model has no chat template of its own (model.chat_template gives it one), so it cannot "
               "answer the general prompts that replay would keep it close to")
        print(f"replay: {why}", file=sys.stderr, flush=True)
        return Replay(report={"skipped": why})
    prompts = load_replay_prompts(settings.source, recipe.resolve_path)
    count = replay_count(settings.ratio, train_rows, len(prompts))
    chosen = pick_replay(prompts, count, recipe.training.seed)
    started = time.monotonic()
    cache = AnswerCache(answer_cache_file(model, model_dir, settings.max_new_tokens))
    asked = [r["prompt"] for r in chosen if r["answer"] is None]
    missing = [prompt for prompt in asked if not cache.has(prompt)]
    shipped = embedded_answers(model, model_dir, settings.max_new_tokens)
    from_shipped = [prompt for prompt in missing if prompt in shipped]
    cache.update(from_shipped, [shipped[prompt] for prompt in from_shipped])
    missing = [prompt for prompt in missing if prompt not in shipped]
    if missing and is_main_process():  # minutes on a CPU for a model tunesmith ships no answers for: said first
        print(f"replay: the base model answers {len(missing)} general prompts first (up to "
              f"{settings.max_new_tokens} tokens each, {recipe.eval.batch_size} at a time; none shipped or cached "
              "for this model; kept for its later runs; data.replay.ratio: 0 trains without them) ...",
              file=sys.stderr, flush=True)
    cache.update(missing, base_answers(model, tokenizer, missing, settings.max_new_tokens, recipe.eval.batch_size))
    answers = [r["answer"] if r["answer"] is not None else cache.get(r["prompt"]) for r in chosen]
    rows = [as_messages(r["prompt"], answer) for r, answer in zip(chosen, answers, strict=True) if answer is not None]
    report = {"source": settings.source, "ratio": settings.ratio, "wanted": round(settings.ratio * train_rows),
              "available": len(prompts), "rows": len(rows), "left_out_unfinished": answers.count(None),
              "answered_by_base": len(asked), "answers_shipped": len(from_shipped),
              "answers_from_cache": len(asked) - len(missing) - len(from_shipped),
              "seconds": round(time.monotonic() - started, 1)}
    if is_main_process():  # with several processes, once
        print(f"replay: {len(rows)} general rows beside {train_rows} training rows ({len(asked)} answered by the "
              f"base model: {len(missing)} now, in {report['seconds']} s, {len(from_shipped)} shipped with tunesmith "
              f"for this model, {report['answers_from_cache']} from the cache of earlier runs; "
              f"{answers.count(None)} unfinished left out)", file=sys.stderr, flush=True)
    encoded = encode_split(tokenizer, rows, recipe.data.max_length)
    report["trained"] = encoded.counts()
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded.examples]
    if settings.anchor_answer_tokens is not None and settings.resolved_loss(recipe.adapter.kind) == "kl":
        examples = [first_answer_tokens(e, settings.anchor_answer_tokens) for e in examples]
        report["anchor_answer_tokens"] = settings.anchor_answer_tokens
    return Replay(rows, save_rows(run, "replay", rows) if rows else None, report, examples)


def first_answer_tokens(example: dict[str, list[int]], count: int) -> dict[str, list[int]]:
    """`example` cut after the first `count` tokens of its answer (the first position that carries a label); the
    prompt stays whole. An example without a labelled position is returned as it is."""
    start = next((i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX), None)
    if start is None:
        return example
    return {key: values[: start + count] for key, values in example.items()}


def embedded_answers(model: Any, model_dir: Path, max_new_tokens: int) -> dict[str, str | None]:
    """The greedy answers shipped for an embedded model (`data.replay.shipped_answers`), used when `model_dir` is
    that model as tunesmith unpacked it and it is loaded as they were made (fp32, not quantized); {} otherwise."""
    import torch

    embedded = model_dir.name in EMBEDDED and model_dir.resolve() == cached_model_dir(model_dir.name).resolve()
    as_made = getattr(model, "dtype", None) == torch.float32 and not getattr(model, "is_loaded_in_4bit", False) \
        and not getattr(model, "is_loaded_in_8bit", False)
    return shipped_answers(model_dir.name, max_new_tokens) if embedded and as_made else {}


def answer_cache_file(model: Any, model_dir: Path, max_new_tokens: int) -> Path:
    """The cache of one base's greedy answers: keyed by its files, how it was loaded (dtype, quantized or not,
    device) and the answer length limit, all of which change what greedy decoding returns."""
    loaded = f"{getattr(model, 'dtype', '')}-{bool(getattr(model, 'is_loaded_in_4bit', False))}-" \
             f"{bool(getattr(model, 'is_loaded_in_8bit', False))}-{getattr(model, 'device', '')}-{max_new_tokens}"
    key = hashlib.sha256(f"{model_fingerprint(model_dir)}:{loaded}".encode()).hexdigest()[:16]
    return tunesmith_home() / "replay" / f"{model_dir.name}-{key}.json"


class AnswerCache:
    """prompt -> the base's answer (None: unfinished), read from and written back to one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, str | None] = (json.loads(path.read_text(encoding="utf-8"))
                                               if path.is_file() else {})

    def has(self, prompt: str) -> bool:
        return prompt in self.answers

    def get(self, prompt: str) -> str | None:
        return self.answers[prompt]

    def update(self, prompts: list[str], answers: list[str | None]) -> None:
        if not prompts:
            return
        self.answers.update(zip(prompts, answers, strict=True))
        atomic_write_json(self.path, self.answers)


def base_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                 batch_size: int) -> list[str | None]:
    """The model's greedy answer to each prompt as a single user turn; None where it did not stop within
    `max_new_tokens` (or answered nothing)."""
    if not prompts:
        return []
    import torch

    rendered = [render(tokenizer, [{"role": "user", "content": p}], generation_prompt=True) for p in prompts]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        generated = generate_from_prompts(model, tokenizer, rendered, max_new_tokens, batch_size)
    model.train(was_training)
    return [text if used < max_new_tokens and text else None
            for text, used in zip(generated.answers, generated.answer_tokens, strict=True)]


class ReplayBatches:
    """Seeded replay mini-batches, the rows reshuffled at each pass: pass k is the (k+1)-th shuffle drawn from one
    random.Random(seed), the stream the defaults were measured with. Batch `draw` depends only on the seed and
    `draw`, so a resumed run draws what the uninterrupted one drew at the same step.

    Which rows meet which step matters at the margin: with per-pass seeds (Random(seed x 1000003 + k)) or with the
    draws grouped by length, the quickstart's probes fell to 0.917 (flagged) where this stream keeps 0.958; one run
    of 48 probes spreads about two probes either way."""

    def __init__(self, examples: list[dict[str, list[int]]], batch_size: int, pad_id: int, seed: int) -> None:
        self.examples, self.batch_size, self.pad_id, self.seed = examples, max(1, batch_size), pad_id, seed
        self.passes: list[list[int]] = []
        self.rng = random.Random(seed)
        self.first_position: dict[int, int] | None = None  # row -> its place in the first pass

    def order(self, epoch: int) -> list[int]:
        while len(self.passes) <= epoch:
            self.passes.append(self.rng.sample(range(len(self.examples)), len(self.examples)))
        return self.passes[epoch]

    def rows(self, draw: int) -> list[int]:
        """The replay rows (indices into `examples`) of batch `draw`."""
        n = len(self.examples)
        return [self.order(k // n)[k % n] for k in range(draw * self.batch_size, (draw + 1) * self.batch_size)]

    def batch(self, rows: list[int], device: Any) -> tuple[Any, Any, Any]:
        """`rows` right-padded: (input_ids, labels, attention_mask), each [len(rows), longest row] on `device`."""
        return tuple(t.to(device) for t in pad_right([self.examples[i] for i in rows], self.pad_id))

    def at(self, draw: int, device: Any) -> tuple[Any, Any, Any]:
        return self.batch(self.rows(draw), device)

    def first_pass_batches(self) -> list[list[int]]:
        """The first pass's batches, in draw order (the last may be short: `first_pass_batch`)."""
        order = self.order(0)
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def first_pass_batch(self, row: int) -> list[int]:
        """The rows of the first pass's batch that holds `row` (its draw in pass 0, without the next pass's rows
        where the pass's last draw runs over)."""
        order = self.order(0)
        if self.first_position is None:
            self.first_position = {i: k for k, i in enumerate(order)}
        start = self.first_position[row] // self.batch_size * self.batch_size
        return order[start : start + self.batch_size]


class BaseReference:
    """The base model's next-token log-probabilities on each replay row, computed once and reused at every draw.

    The KL anchor is only used with adapters that leave the base untouched (`data.replay.loss` auto), so the base's
    distribution on a replay row never changes while training: computing it at each draw repeats the same forward
    pass (at ratio r a batch of 8 draws 8r replay rows from a pool of r x the training rows, so each row is drawn
    once an epoch, and as often as the rows allow beyond the bundled set's 226). A row is kept when first drawn,
    from a base pass over its batch of the first pass (in the first pass, the draw's own batch), up to `limit_bytes`
    (`reference_cache_limit` when None); a draw whose rows are all kept runs no base pass, and rows beyond the
    limit are recomputed with the draw's batch at each draw, as before (where the frozen base multiplies in bf16,
    `train/frozen_matmuls.py`, those recomputed rows see its bf16 matmuls; the kept ones were read in fp32). So a
    run that draws fewer rows than the replay set computes only the rows it draws, and a run resumed in a later
    pass computes each row in the same batch (the same padding, so the same values to the bit) as the uninterrupted
    run. Each row is kept as
    [real positions - 1, vocabulary] fp32 log-probabilities on the training device: ~190 KiB a token for
    SmolLM2's 49,152-entry vocabulary.
    """

    def __init__(self, limit_bytes: int | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.kept: dict[int, Any] = {}
        self.used_bytes = 0
        self.base_passes = 0  # anchor batches whose base pass ran
        self.base_seconds = 0.0  # spent in those passes (the time budget plans the first pass's steps with them)
        self.full = False  # a row did not fit under the limit
        self.reused = 0  # anchor batches served from the cache
        self.on_base_pass: Callable[[Any, bool], None] | None = None  # given each base pass's mask, packed or not

    def log_probs(self, replay: ReplayBatches, rows: list[int], model: Any, peft_model: Any,
                  device: Any) -> tuple[Any, Any]:
        """(the batch of `rows`, the base's log-probabilities at its scored positions: [scored, vocabulary], in
        `anchor_kl`'s order), from the cache where every row is in it, else from a base pass."""
        import torch

        self.set_limit(device, replay, model)
        batch = replay.batch(rows, device)
        missing = [i for i in rows if i not in self.kept]
        if not missing:
            self.reused += 1
            return batch, torch.cat([self.kept[i] for i in rows])
        own = None  # the base pass of this draw's batch, where it is a first-pass batch
        for first in dict.fromkeys(tuple(replay.first_pass_batch(i)) for i in missing):
            if self.full:
                break
            reference = self.base_pass(list(first), replay.batch(list(first), device), model, peft_model)
            own = reference if list(first) == rows else own
        if all(i in self.kept for i in rows):
            return batch, torch.cat([self.kept[i] for i in rows])
        # past the limit: this draw's own batch, as without a cache
        return batch, own if own is not None else self.base_pass(rows, batch, model, peft_model)

    def set_limit(self, device: Any, replay: ReplayBatches, model: Any) -> None:
        """`limit_bytes` from the device's memory, where not given (once, and said, with what keeping every row of
        `replay` takes: 4 bytes x vocabulary a scored position)."""
        if self.limit_bytes is not None:
            return
        self.limit_bytes = reference_cache_limit(device)
        scored = sum(max(len(e["input_ids"]) - 1, 0) for e in replay.examples)
        every_row = scored * model.config.vocab_size * 4
        fits = (f"{every_row / 2**20:,.1f} MB for all {len(replay.examples)} rows, within the "
                f"{self.limit_bytes / 2**20:,.0f} MB allowed, so no row needs a second" if every_row <= self.limit_bytes
                else f"{every_row / 2**20:,.1f} MB for all {len(replay.examples)} rows; {self.limit_bytes / 2**20:,.0f}"
                     f" MB allowed, rows past it are recomputed at each draw")
        print(f"replay anchor: the base's log-probabilities on each replay row drawn are kept after its first base "
              f"pass ({fits})", file=sys.stderr, flush=True)

    def base_pass(self, rows: list[int], batch: tuple[Any, Any, Any], model: Any, peft_model: Any) -> Any:
        """The base's log-probabilities for `batch`; each row not kept yet is kept while the limit allows."""
        began = time.monotonic()
        reference = base_log_probs(model, peft_model, batch)
        self.base_seconds += time.monotonic() - began
        self.base_passes += 1
        if self.on_base_pass is not None:
            self.on_base_pass(batch[2], packed_replay(model, batch))
        scored = batch[2][:, 1:].sum(dim=1).tolist()
        for i, part in zip(rows, reference.split(scored), strict=True):
            if i in self.kept:
                continue
            if self.used_bytes + part.nbytes > self.limit_bytes:
                self.full = True
                continue
            self.kept[i] = part.clone()
            self.used_bytes += part.nbytes
        return reference

    def report(self) -> dict[str, Any]:
        """What train.json's replay block says about the cache."""
        return {"rows_kept": len(self.kept), "kept_mb": round(self.used_bytes / 2**20, 1),
                "limit_mb": round((self.limit_bytes or 0) / 2**20, 1),
                "base_passes": self.base_passes, "batches_from_cache": self.reused}


def reference_cache_limit(device: Any) -> int:
    """Bytes BaseReference may keep: REFERENCE_CACHE_SHARE of the memory available now on a CPU,
    REFERENCE_CACHE_ACCELERATOR_BYTES on an accelerator."""
    import torch

    if torch.device(device).type != "cpu":
        return REFERENCE_CACHE_ACCELERATOR_BYTES
    return int(REFERENCE_CACHE_SHARE * available_memory())


def packing_pays(lengths: list[int], config: Any) -> bool:
    """Whether a replay batch of rows with these real `lengths` costs fewer FLOPs packed into one row (attention
    masked block by block: sum of length² / 2 query-key pairs) than right-padded to the longest (rows x longest
    tokens, rows x longest² / 2 pairs). Per layer and token, the linear layers cost 2 (4 h² + 3 h i) FLOPs and
    each causal pair 4 h (h hidden size, i the MLP's width). Only under PyTorch's SDPA, whose kernels take the
    boolean block mask; other attention implementations get the padded batch.

    Short rows pack: the bundled replay rows are 46-193 tokens long, and a padded batch of 4 of them is 26% padding
    (packed, the anchor ran 1.14x faster: benchmarks/anchor_padding.py); a few long rows of equal length do not."""
    hidden = getattr(config, "hidden_size", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hidden or len(lengths) < 2:
        return False
    per_token = 2 * (4 * hidden**2 + 3 * hidden * getattr(config, "intermediate_size", 4 * hidden))
    per_pair = 4 * hidden

    def flops(tokens: int, pairs: float) -> float:
        return tokens * per_token + pairs * per_pair

    total, longest = sum(lengths), max(lengths)
    return flops(total, sum(n * n for n in lengths) / 2) < flops(len(lengths) * longest,
                                                                   len(lengths) * longest**2 / 2)


def packed_replay(model: Any, batch: tuple[Any, Any, Any]) -> bool:
    """Whether `replay_logits` runs this replay batch packed."""
    return packing_pays(batch[2].sum(dim=1).tolist(), getattr(model, "module", model).config)


def real_positions(model: Any, batch: tuple[Any, Any, Any]) -> Any:
    """Where the real tokens of a replay `batch` lie in the hidden states `replay_logits` runs: bool [rows, longest]
    (the attention mask) padded, [1, real tokens] all true packed."""
    import torch

    mask = batch[2]
    if packed_replay(model, batch):
        return torch.ones(1, int(mask.sum()), dtype=torch.bool, device=mask.device)
    return mask.bool()


def replay_logits(model: Any, batch: tuple[Any, Any, Any]) -> Any:
    """The logits at every real position but each row's last, of a right-padded replay `batch`
    (`ReplayBatches.batch`): [scored positions, vocabulary], the rows one after another.

    Where `packing_pays`, the rows run as one padding-free row: position ids restart at each row and a
    [1, 1, T, T] boolean mask keeps attention causal within each row, so every real position sees what it sees in
    the padded batch (the same values to float rounding); the LM head then projects only the scored positions
    (`logits_to_keep`), which saved the indexing of a [positions, 49k] tensor and its backward (~5% of a draw)."""
    import torch

    ids, _, mask = batch
    lengths = mask.sum(dim=1).tolist()
    if not packed_replay(model, batch):
        return model(input_ids=ids, attention_mask=mask).logits[:, :-1][mask[:, 1:].bool()]
    device = ids.device
    flat = torch.cat([ids[i, :n] for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    row = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths)])
    causal = torch.ones(len(row), len(row), dtype=torch.bool, device=device).tril()
    blocks = ((row[:, None] == row[None, :]) & causal)[None, None]
    scored = torch.cat([torch.arange(n, device=device) < n - 1 for n in lengths])
    if not takes_logits_to_keep(model):
        return model(input_ids=flat, position_ids=positions, attention_mask=blocks).logits[0][scored]
    keep = scored.nonzero().squeeze(1)  # the LM head projects only these: no [positions, vocabulary] to index
    return model(input_ids=flat, position_ids=positions, attention_mask=blocks, logits_to_keep=keep).logits[0]


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the causal LM under `model` (a PEFT model, possibly wrapped for DDP) takes `logits_to_keep` as a
    tensor of positions (transformers' causal LMs: `slice_logits_to_keep`, or its inline form before 5.x)."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return forward_takes(type(inner), "logits_to_keep")


@functools.cache
def forward_takes(model_class: type, argument: str) -> bool:
    return argument in inspect.signature(model_class.forward).parameters


def base_log_probs(model: Any, peft_model: Any, batch: tuple[Any, Any, Any]) -> Any:
    """The base's (adapter switched off) next-token log-probabilities at every real position but the last:
    [scored positions, vocabulary] fp32, the rows' positions one after another; no gradients."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), peft_model.disable_adapter():
        return F.log_softmax(replay_logits(model, batch).float(), dim=-1)


def anchor_kl(model: Any, batch: tuple[Any, Any, Any], reference: Any) -> Any:
    """KL(base || tuned) per token of the replay batch: the base's next-token distribution (`reference`, from
    `base_log_probs`) against the tuned model's, summed over the vocabulary, averaged over every real position,
    the prompt's as well as the answer's (on the quickstart that kept the probes at 0.96 where the answer
    positions alone kept 0.92; benchmarks/results/forgetting_settings.json). Short rows run packed
    (`replay_logits`).

    The Learning-without-Forgetting anchor (Li and Hoiem 2016, arXiv:1606.09282) with the base as its own
    teacher on general prompts; KL to the reference as in RLHF (Ouyang et al. 2022, arXiv:2203.02155).
    """
    import torch.nn.functional as F

    tuned = replay_logits(model, batch).float()
    return F.kl_div(F.log_softmax(tuned, dim=-1), reference, log_target=True, reduction="batchmean")


def replay_for(recipe: Recipe, run: Run, setup: Any) -> tuple[Replay, dict[str, Any]]:
    """The replay rows for a training `setup` (train/common.py TrainingSetup, whose replay_file run.json records)
    and the anchored trainer's extra arguments (`replay_anchor`); every method that takes replay starts here."""
    replay = build_replay(recipe, run, setup.model, setup.tokenizer, setup.model_dir, len(setup.splits.train))
    setup.replay_file = replay.file
    return replay, replay_anchor(recipe, replay, setup.tokenizer)


def replay_anchor(recipe: Recipe, replay: Replay, tokenizer: Any) -> dict[str, Any]:
    """The anchored trainer's extra arguments when the replay rows train through the KL anchor ({} otherwise):
    round(ratio x rows per optimizer step) replay rows a step (at least one), shared between its micro-batches; where
    a step has fewer of them than micro-batches, one row each on that many of its micro-batches, spread evenly
    (`replay_micro_batches`), so that micro-batches of long rows do not multiply the anchor's rows."""
    if not replay.examples or recipe.data.replay.resolved_loss(recipe.adapter.kind) != "kl":
        return {}
    t = recipe.training
    per_step = max(1, round(recipe.data.replay.ratio * t.batch_size * t.grad_accum))
    per_micro, carrying = max(1, round(per_step / t.grad_accum)), min(per_step, t.grad_accum)
    replay.report.update(loss="kl", weight=recipe.data.replay.weight, rows_per_step=per_micro * carrying)
    return {"replay_batches": ReplayBatches(replay.examples, per_micro, tokenizer.pad_token_id, t.seed),
            "replay_weight": recipe.data.replay.weight, "replay_report": replay.report,
            "null_space": recipe.data.replay.null_space, "replay_micro_batches": carrying}


def keep_null_space(trainer: Any, replay: ReplayBatches, reference: BaseReference, energy: float) -> dict[str, Any]:
    """Project the trainer's LoRA A matrices off the replay rows' principal input directions and keep them there
    after every optimizer step; train.json's replay.null_space report.

    The base's pass over the replay rows that measures their inputs is the anchor's base pass: run over the first
    pass's batches (`BaseReference.base_pass`, the batches it keeps rows from), it keeps their log-probabilities, so
    training runs no base pass for the rows kept (one forward of the base over the replay rows instead of two)."""
    from tunesmith.train.null_space import build_null_space, null_space_callback

    model = trainer.accelerator.unwrap_model(trainer.model)
    device = next(model.parameters()).device
    reference.set_limit(device, replay, model)

    def read_first_pass(moments: Any) -> None:
        for rows in replay.first_pass_batches():  # every row: past the cache's limit, rows are read but not kept
            batch = replay.batch(rows, device)
            moments.read(real_positions(model, batch))
            reference.base_pass(rows, batch, model, model)

    space = build_null_space(model, replay.examples, replay.pad_id, energy, read_rows=read_first_pass)
    trainer.add_callback(null_space_callback(space))
    if "skipped" not in space.report:
        print(f"replay anchor: that read kept the base's log-probabilities of {len(reference.kept)} of "
              f"{len(replay.examples)} replay rows, so training runs no base pass for them",
              file=sys.stderr, flush=True)
    return {**space.report, "base_rows_kept": len(reference.kept)}


def anchored(trainer_class: type) -> type:
    """`trainer_class` (TRL's SFTTrainer, or a preference trainer: config.ANCHORED_METHODS) with the replay anchor
    added to the training micro-batches' loss: loss + data.replay.weight x KL(base || tuned) on the replay rows of
    `replay_micro_batches` of each step's micro-batches (all of them when None; the term scaled so that a step's
    anchor is the mean over its replay rows either way), the base's side from `BaseReference`; with `null_space` > 0,
    each LoRA A is kept off the replay rows' principal input directions (`train/null_space.py`, measured and
    projected here, before the time budget's measurement)."""

    class ReplayAnchoredTrainer(trainer_class):
        def __init__(self, *args: Any, replay_batches: ReplayBatches, replay_weight: float,
                     replay_report: dict[str, Any], null_space: float = 0.0,
                     replay_micro_batches: int | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.replay_micro_batches = replay_micro_batches
            self.replay_training = False  # before train(): the time budget's measurement, where every batch draws
            self.replay_paused = False  # the measurement's batch without the anchor (train/budget.py)
            self.base_reference = BaseReference()
            if null_space:
                replay_report["null_space"] = keep_null_space(self, replay_batches, self.base_reference, null_space)
            self.replay_batches, self.replay_weight = replay_batches, replay_weight
            self.replay_step, self.replay_micro = -1, 0
            self.replay_kls: list[float] = []  # the anchor's KL per micro-batch since the last training log
            self.replay_report = replay_report  # train.json's replay block, which gains the cache's figures

        def train(self, *args: Any, **kwargs: Any) -> Any:
            self.replay_step, self.replay_micro = -1, 0  # the time budget's measurement drew before training
            self.replay_training = True
            try:
                result = super().train(*args, **kwargs)
            finally:
                self.replay_training = False
            self.replay_report["base_reference"] = self.base_reference.report()
            return result

        def carrying_micro_batches(self) -> int:
            """How many of a step's micro-batches carry replay rows: `replay_micro_batches`, or all of them (before
            training too: the time budget measures a batch with its replay rows)."""
            accumulated = self.args.gradient_accumulation_steps
            if not self.replay_training or self.replay_micro_batches is None:
                return accumulated
            return min(self.replay_micro_batches, accumulated)

        def replay_draw(self) -> int | None:
            """The draw for this micro-batch, from the optimizer step and the micro-batch within it; None where it
            carries no replay rows (`carrying_micro_batches` of the step's micro-batches do, spread evenly), or
            while `replay_paused`."""
            if self.replay_paused:
                return None
            if self.replay_step != self.state.global_step:
                self.replay_step, self.replay_micro = self.state.global_step, 0
            micro, carrying = self.replay_micro, self.carrying_micro_batches()
            self.replay_micro += 1
            accumulated = self.args.gradient_accumulation_steps
            before, after = micro * carrying // accumulated, (micro + 1) * carrying // accumulated
            return self.state.global_step * carrying + before if after > before else None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not model.training:
                return result
            draw = self.replay_draw()
            if draw is None:
                return result
            loss, outputs = result if return_outputs else (result, None)
            loss = loss + self.anchor_term(model, draw, num_items_in_batch, loss.device)
            return (loss, outputs) if return_outputs else loss

        def anchor_term(self, model: Any, draw: int, num_items_in_batch: Any, device: Any) -> Any:
            """data.replay.weight x KL(base || tuned) on the replay rows of `draw`, scaled for the step."""
            counter = getattr(self, "token_counter", None)  # the TokenCounter, while training is timed
            self.base_reference.on_base_pass = counter.count_base_pass if counter is not None else None
            batch, reference = self.base_reference.log_probs(
                self.replay_batches, self.replay_batches.rows(draw), model,
                self.accelerator.unwrap_model(model), device)
            kl = anchor_kl(model, batch, reference)
            if counter is not None:
                counter.count_anchor(batch[2], packed_replay(model, batch))
            self.replay_kls.append(kl.item())
            # a step's anchor is the mean over the micro-batches that carry replay rows, whichever carry them
            carried = self.args.gradient_accumulation_steps / self.carrying_micro_batches()
            return self.replay_weight * kl * carried / self.accumulation_share(num_items_in_batch)

        def anchor_alone(self, model: Any, num_items_in_batch: Any) -> Any:
            """A micro-batch slot whose rows were merged into another pass (`train/micro_batches.py`): the anchor's
            draw for the slot, if it has one, forward and backward on its own; the loss it added (0 without)."""
            import torch

            draw = self.replay_draw()
            if draw is None:
                return torch.zeros((), device=self.args.device)
            model.train()
            with self.compute_loss_context_manager():
                loss = self.anchor_term(model, draw, num_items_in_batch, self.args.device)
            self.accelerator.backward(loss)
            return loss.detach()

        def accumulation_share(self, num_items_in_batch: Any) -> int:
            """What the anchor's term is divided by for gradient accumulation: the micro-batches of the step where
            the method's loss already carries the accumulation (normalised by num_items_in_batch, as SFT's is),
            else 1, since the Trainer then divides the whole loss (transformers' `Trainer.training_step`)."""
            scaled = getattr(self, "loss_is_scaled_for_ga", None)
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                    or self.compute_loss_func is not None
            return self.current_gradient_accumulation_steps if scaled else 1

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if self.replay_kls and "loss" in logs:  # a training log: the anchor's mean KL since the last one
                logs["replay_kl"] = sum(self.replay_kls) / len(self.replay_kls)
                logs["replay_term"] = self.replay_weight * logs["replay_kl"]  # what the anchor adds to the loss
                self.replay_kls.clear()
            super().log(logs, *args, **kwargs)

    return ReplayAnchoredTrainer
