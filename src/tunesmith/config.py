"""The recipe: one YAML file that describes an experiment, validated by pydantic.

Validation never rewrites what the user wrote: a recipe that cannot work fails with the key's path,
the line in the file, the bad value and a hint (a did-you-mean for misspelt keys).
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tunesmith.errors import RecipeError, shell_arg


def check_http_url(url: str) -> None:
    """An API address must be http(s)://host...: without the scheme, urllib fails only when the first request goes
    out (for a judge, after all of eval's generation). Raises ValueError (a recipe validator's or a CLI's error)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) address: write it whole, e.g. http://127.0.0.1:8000/v1 or "
                         "https://api.openai.com/v1")


def check_regex(key: str, pattern: str | None) -> None:
    """A recipe regex must compile now, not fail on the first row or completion mid-run."""
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key} {pattern!r} is not a valid regular expression: {exc}") from None


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    source: str = Field(
        "smollm2-135m-instruct",
        description="Embedded alias, Hub id, local directory or .gguf file.",
    )
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str | None = Field(
        None, description="The chat template rows are rendered with, in place of the model's own (a base model has "
                           "none): chatml (ChatML turns, each closed by the tokenizer's eos_token so the tuned model "
                           "stops), a .jinja file (relative paths are from the recipe), or Jinja text. The run keeps "
                           "it: eval, merge, export and serve render with it.")

    @field_validator("chat_template")
    @classmethod
    def _a_template_is_named(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty: name chatml, a .jinja file or write the template, or leave the key out to "
                             "use the model's own")
        return value


PII_KINDS = ["EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "IBAN", "US_SSN", "SECRET"]


class CleanSection(Section):
    """Cleaning steps, in the order they run; each reports what it changed or removed."""

    normalize: bool = Field(True, description="Unicode NFC, broken UTF-8, control characters, repeated spaces.")
    pii: Literal["off", "redact", "drop"] = Field(
        "off", description="Redact PII with tokens like <EMAIL>, or drop rows that contain any.")
    pii_kinds: list[Literal["EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "IBAN", "US_SSN", "SECRET"]] = Field(
        default_factory=lambda: list(PII_KINDS))
    min_tokens: int | None = Field(None, ge=1, description="Drop rows shorter than this (model's tokenizer).")
    max_tokens: int | None = Field(None, ge=1, description="Drop rows longer than this (model's tokenizer).")
    drop_refusals: bool = Field(False, description='Drop rows whose answers are refusals ("As an AI...").')
    languages: list[str] = Field(default_factory=list, description="Keep only these languages (ISO 639-1 codes, "
                                                                  "e.g. en; written in capitals, they are read "
                                                                  "lower-case).")
    language_confidence: float = Field(0.5, ge=0, le=1)
    dedup: Literal["off", "exact", "near"] = Field(
        "exact", description="Drop exact duplicates, or near duplicates too (MinHash LSH).")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity that counts as duplicate.")
    num_perm: int = Field(128, ge=16)

    @field_validator("pii", "dedup", mode="before")
    @classmethod
    def _off_as_yaml_writes_it(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML 1.1 reads an unquoted `off` (and `no`, `false`) as the boolean false: the documented `pii: off`
        arrived as False and was refused. False means `off`; true is refused with the values to write instead."""
        if value is False:
            return "off"
        if value is True:
            on = {"pii": "redact or drop", "dedup": "exact or near"}[info.field_name]
            raise ValueError(f"YAML reads on/yes/true as the boolean true, which names no setting: write {on}")
        return value

    @field_validator("languages")
    @classmethod
    def _lower_case_codes(cls, value: list[str]) -> list[str]:
        return [code.strip().lower() for code in value]

    @model_validator(mode="after")
    def _bounds_ordered(self) -> CleanSection:
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")
        return self


# Adapter kinds whose model with the adapter switched off is the untouched base (the KL anchor's reference);
# PiSSA, OLoRA and LoftQ rewrite base weights at init, and full/partial/hft train the base itself.
BASE_PRESERVING_KINDS = ("lora", "dora", "rslora", "qlora", "adalora", "ia3", "prompt_tuning", "prefix_tuning",
                         "p_tuning")
# Virtual tokens or key/value prefixes: nothing to fold into the weights, and (prompt_tuning, p_tuning) logits for
# positions the input does not have
PROMPT_LEARNING_KINDS = frozenset({"prompt_tuning", "prefix_tuning", "p_tuning"})
# Where such an adapter can be used: what merge, export and serve say when asked for what it cannot become
PROMPT_LEARNING_USE = ("A prompt-learning adapter runs only through PEFT: `tunesmith chat RUN`, `tunesmith eval RUN`, "
                       "`tunesmith compare`, or PeftModel.from_pretrained(base, 'RUN/adapter') in Python; no merged "
                       "model, GGUF file or server holds its virtual tokens. For a model to export or serve, train "
                       "adapter.kind lora.")
# Where the KL anchor applies (data.replay.loss kl): the adapter leaves the base untouched and the replay rows run
# through the model as plain token rows; prompt-learning adapters replay with the sft loss instead
KL_ANCHOR_KINDS = tuple(kind for kind in BASE_PRESERVING_KINDS if kind not in PROMPT_LEARNING_KINDS)


# Measured on the quickstart (benchmarks/results/forgetting_settings.json; README "Keeping what the base could do").
DEFAULT_REPLAY_RATIO = 0.5
# data.replay.ratio where the null space is on (default_replay_ratio): it keeps the adapter off the general rows'
# inputs, so the anchor needs half the rows (2 a step at batch 8, a quarter of the training rows to read): on the
# quickstart probes 0.979 (1.00 at 0.5), exact match 0.625 (0.6375), training 173.5 s instead of 214.7 s; routing and
# tickets under a 10-minute budget in README "Keeping what the base could do" (benchmarks/results/defaults.json).
NULL_SPACE_REPLAY_RATIO = 0.25
DEFAULT_REPLAY_WEIGHT = 4.0
NULL_SPACE_KINDS = ("lora", "rslora", "qlora", "dora")  # an update B·A·x beside an untouched layer
# data.replay.null_space where it applies (default_null_space), with the 226-prompt replay set: probes 1.00, 1.00,
# 0.979 on the quickstart and 0.958, 0.958, 1.00 on routing under a 10-minute budget (seeds 42, 1, 2), where 0.95 lost
# 5 probes and 0.99 cost exact match 0.05 (README, "Keeping what the base could do"; benchmarks/results/defaults.json,
# forgetting_settings.json).
DEFAULT_NULL_SPACE = 0.98
# The replay anchor keeps the base's log-probabilities on each replay row (train/replay.py BaseReference): at most
# this share of the memory available when training starts (CPU), or REFERENCE_CACHE_ACCELERATOR_BYTES on a GPU,
# where the base's pass is cheap beside the memory it would hold
REFERENCE_CACHE_SHARE = 0.25
REFERENCE_CACHE_ACCELERATOR_BYTES = 2**30
MIN_MAX_LENGTH = 16


class ReplaySection(Section):
    """General rows mixed into supervised training so the tuned model keeps answering as the base did.

    Rows are prompts whose answers are the base model's own greedy answers, generated before training
    (self-distillation; Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in Language Model
    Fine-Tuning", arXiv:2402.13669), or a file's own answers. Replaying a small share of general data is the
    standard rehearsal remedy for forgetting (Scialom et al. 2022, "Fine-tuned Language Models are Continual
    Learners", arXiv:2205.12393, used 1%).
    """

    source: str = Field("bundled", description="bundled: tunesmith's general prompt set (src/tunesmith/data/replay); "
                                               "or a JSONL file (relative to the recipe) of rows with `prompt` and "
                                               "an optional `answer` (the base model answers the rest).")
    ratio: float | None = Field(None, ge=0, le=1, description="Replay rows per training row (0.5: 200 replay rows "
                                                             "beside 400 training rows, at most the source's rows; "
                                                             "the anchor takes round(ratio x rows a step)); 0 "
                                                             "turns replay off. Default: DEFAULT_REPLAY_RATIO (0.5) "
                                                             "for method.kind sft, and for dpo, kto, orpo and simpo "
                                                             "with an adapter that leaves the base untouched (the "
                                                             "KL anchor), NULL_SPACE_REPLAY_RATIO (0.25) where the "
                                                             "null space is on beside the anchor; 0 otherwise (cpt "
                                                             "takes it when asked).")
    max_new_tokens: int = Field(160, ge=8, description="Longest base answer kept; answers the base does not finish "
                                                       "within it are left out, not trained cut.")
    loss: Literal["auto", "kl", "sft"] = Field(
        "auto", description="kl: each step adds weight x KL(base || tuned) on every token of the replay rows, the "
                            "base being the model with the adapter off; sft: the replay rows join the training rows. "
                            "auto: kl for adapters that leave the base untouched, sft otherwise.")
    weight: float = Field(DEFAULT_REPLAY_WEIGHT, gt=0, description="kl: the anchor's weight beside the task loss.")
    anchor_answer_tokens: int | None = Field(
        None, ge=1,
        description="kl: the anchor covers each replay row's prompt and only the first N tokens of its answer, where "
                    "a greedy answer is decided: a third less time a step, but on the tickets recipe it kept 42 "
                    "probes of 48 where the whole rows keep 47 (README); null (the default): the whole answer.")
    null_space: float | None = Field(
        None, ge=0, lt=1,
        description="Keep each LoRA A matrix orthogonal to the directions that hold this share of the replay rows' "
                    "inputs at its layer (their second moment's top eigenvectors), from the start and after every "
                    "step, so the adapter adds almost nothing to general prompts (AlphaEdit's null-space constraint, "
                    "arXiv:2410.02355). 0 turns it off. Default: DEFAULT_NULL_SPACE (0.98) for method.kind sft with "
                    "a LoRA-family adapter (NULL_SPACE_KINDS), the KL anchor and no sharded training (fsdp, "
                    "deepspeed); 0 otherwise. It is skipped, with a line saying so, when the layers' input moments "
                    "would take over a quarter of the free memory.")

    def resolved_loss(self, adapter_kind: str) -> str:
        if self.loss != "auto":
            return self.loss
        return "kl" if adapter_kind in KL_ANCHOR_KINDS else "sft"


# The keys the row shapes read (data/shapes.py LAYOUTS and OPTIONAL_KEYS; a test keeps the two equal): what
# data.columns may rename a column to
COLUMN_TARGETS = frozenset({"messages", "conversations", "system", "tools", "chosen", "rejected", "prompt",
                            "completion", "label", "instruction", "input", "output", "history", "text",
                            "completions", "generations", "ratings"})


class DataSection(Section):
    train: str = Field(..., description="Training file (JSONL); relative paths are from the recipe.")
    eval: str | None = Field(None, description="Held-out file; when absent, eval_fraction is held out.")
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "preference",
                    "scored_completions", "rated_generations", "unpaired_preference", "text", "prompt"] = Field(
        "auto", description="The rows' shape; auto detects it from the first usable row.")
    file_format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "datasets", "text"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="Rename source columns, e.g. {question: prompt}.")
    skip_invalid: bool = Field(False, description="Skip unusable rows (counted in data.json) instead of failing.")
    max_length: int | Literal["auto"] = Field(
        "auto", description="Tokens per sequence; rows beyond it are cut (a row whose answer would be cut is left out "
                            "and counted). auto: long enough for every training and held-out row, at least 512, "
                            "within the model's context (raw-text blocks under packing: 512).")
    system_prompt: str | None = Field(None, description="Prepended as a system turn to every row.")
    system_fallback: Literal["keep", "merge"] = Field(
        "keep", description="merge: put the system turn's text in front of the first user turn, for chat templates "
                            "that drop or refuse the system role (keep: a template that cannot is refused).")
    tool_format: Literal["template", "hermes"] = Field(
        "template", description="How tool schemas, calls and results are rendered: through the chat template "
                                "(refused when it cannot express tools), or hermes: as <tools>, <tool_call> and "
                                "<tool_response> JSON blocks in the turns' text.")
    clean: CleanSection = Field(default_factory=CleanSection)
    replay: ReplaySection = Field(default_factory=ReplaySection)

    @field_validator("columns")
    @classmethod
    def _columns_map_onto_what_rows_hold(cls, value: dict[str, str]) -> dict[str, str]:
        """Each column is renamed to a key some row shape reads (COLUMN_TARGETS); a misspelt one would only surface
        as "cannot tell the dataset shape" when the data loads."""
        for source, target in value.items():
            if target not in COLUMN_TARGETS:
                close = difflib.get_close_matches(str(target), sorted(COLUMN_TARGETS), n=1)
                guess = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{source}: {target!r} is not a key any row shape reads.{guess} Map columns onto "
                                 f"{', '.join(sorted(COLUMN_TARGETS))}")
        return value

    @field_validator("max_length")
    @classmethod
    def _max_length_fits_a_row(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < MIN_MAX_LENGTH:
            raise ValueError(f"must be at least {MIN_MAX_LENGTH} tokens (a chat template's markers alone take ~10), "
                             "or auto")
        return value


class SFTMethod(Section):
    kind: Literal["sft"] = "sft"


class CPTMethod(Section):
    """Continued pre-training on raw `text` rows: loss on every token; with training.packing the documents
    are joined and cut into data.max_length blocks."""

    kind: Literal["cpt"] = "cpt"


class DPOMethod(Section):
    """Direct Preference Optimization (Rafailov et al. 2023) on chosen/rejected pairs."""

    kind: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="KL strength toward the reference model; the paper uses 0.1.")
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
                       "sigmoid_norm"] = Field("sigmoid", description="sigmoid is the paper's loss.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Robust DPO's label-flip probability.")


class ORPOMethod(Section):
    """Odds-Ratio Preference Optimization (Hong et al. 2024): SFT loss plus λ · odds-ratio loss, no reference."""

    kind: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="λ, the weight of the odds-ratio term; the paper uses 0.1.")


class KTOMethod(Section):
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on desirable/undesirable completions."""

    kind: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="KL strength toward the reference model; the paper uses 0.1.")
    desirable_weight: float = Field(1.0, gt=0, description="Raise to balance fewer desirable than undesirable rows.")
    undesirable_weight: float = Field(1.0, gt=0, description="Raise to balance fewer undesirable rows.")


class SimPOMethod(Section):
    """Simple Preference Optimization (Meng et al. 2024): length-normalised reward margin, no reference model."""

    kind: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, description="Reward scale; the paper uses 2.0-2.5.")
    gamma: float = Field(0.5, ge=0, description="Target reward margin γ; the loss subtracts γ/β from the log-ratio.")


PREFERENCE_KINDS = ("dpo", "orpo", "kto", "simpo")


class RewardMethod(Section):
    """Reward-model training (Bradley-Terry, as in InstructGPT): a one-score head on the base, trained so the
    chosen answer of each pair scores above the rejected one. A GRPO run can then use it as reward
    `reward_model`."""

    kind: Literal["reward"] = "reward"
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Pull scores toward mean zero (Eisenstein et al. 2023; 0.01 is usual); null: off.")


# A reward model is the base with a score head; these adapter kinds train it (others do not fit a score head).
REWARD_ADAPTER_KINDS = ("lora", "dora", "rslora", "full", "partial")
WHOLE_MODEL_KINDS = ("full", "partial", "hft")  # train the model's own weights and save model/, not an adapter

# Built-in GRPO rewards and the one setting each needs (None: it needs none); see train/rewards.py.
REWARD_SETTINGS: dict[str, str | None] = {"exact_match": None, "numeric_match": None, "tool_call_match": None,
                                          "json_valid": None, "regex": "pattern",
                                          "json_schema": "json_schema", "length_penalty": "target",
                                          "reward_model": "path"}
REFERENCE_REWARDS = ("exact_match", "numeric_match", "tool_call_match")  # compare a completion with the row's answer


class RewardSpec(Section):
    """One GRPO reward: a built-in by name, or a user function named `module:function` or `path/file.py:function`
    that takes (completion, reference) and returns a float. Rewards add up, each times its weight."""

    name: str = Field(..., description="exact_match, numeric_match, tool_call_match, regex, json_valid, json_schema, "
                                       "length_penalty, reward_model, or a user function module:function / "
                                       "path/to/file.py:function.")
    weight: float = Field(1.0, description="Factor of this reward in the sum that GRPO normalises per group.")
    pattern: str | None = Field(None, description="regex: the pattern a whole completion must match.")
    json_schema: str | None = Field(None, description="json_schema: a JSON Schema file (relative to the recipe).")
    target: int | None = Field(None, ge=1, description="length_penalty: completions up to this many tokens cost "
                                                       "nothing; each token beyond costs 1/target (down to -1).")
    path: str | None = Field(None, description="reward_model: a `method.kind: reward` run directory, or its adapter/ "
                                               "or model/ folder (relative to the recipe); scores prompt + completion.")

    @model_validator(mode="after")
    def _settings_fit_the_reward(self) -> RewardSpec:
        """Name an unknown reward, a missing setting, or a setting that another reward would use."""
        if self.name not in REWARD_SETTINGS and ":" not in self.name:
            close = difflib.get_close_matches(self.name, list(REWARD_SETTINGS), n=1)
            guess = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown reward {self.name!r}.{guess} Choose from {', '.join(REWARD_SETTINGS)}, or a "
                             "user function module:function / path/to/file.py:function")
        needed = REWARD_SETTINGS.get(self.name)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"reward {self.name!r} needs {needed!r}: add it next to the name")
        settings = ("pattern", "json_schema", "target", "path")
        stray = [key for key in settings if key != needed and getattr(self, key) is not None]
        if stray:
            raise ValueError(f"reward {self.name!r} does not use {', '.join(stray)}: remove it")
        check_regex("pattern", self.pattern)
        return self


class GRPOMethod(Section):
    """Group Relative Policy Optimization (Shao et al. 2024): sample a group of completions per prompt, score
    them with the rewards, and push up those above their group's mean. Needs no reference answers to imitate,
    only a way to score (rows still carry one: the `completion`, given to rewards as `reference`)."""

    kind: Literal["grpo"] = "grpo"
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="exact_match")], min_length=1)
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group); "
                                                      "training.batch_size x grad_accum must be a multiple.")
    max_completion_length: int = Field(64, ge=1, description="New tokens per sampled completion.")
    beta: float = Field(0.0, ge=0, description="KL strength toward the base (adapter off). 0 skips the reference "
                                               "pass, as TRL and recent GRPO work do; DeepSeek-R1 used 0.001.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the group needs varied completions.")


Method = Annotated[SFTMethod | CPTMethod | DPOMethod | ORPOMethod | KTOMethod | SimPOMethod | RewardMethod
                   | GRPOMethod, Field(discriminator="kind")]

TARGET_PRESETS: dict[str, list[str] | str] = {
    "qv": ["q_proj", "v_proj"],
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all-linear": "all-linear",
}


LORA_DROPOUT_WHY = ("Dropout on each adapted linear's input (default 0, PEFT's LoraConfig default). On a CPU each "
                    "step draws a random mask per adapted linear: 0.05 made a SmolLM2-135M LoRA step 1.33x slower "
                    "and 1 GB larger (benchmarks/train_step_paths.py).")


class LoraPlacement(Section):
    """Where LoRA-style modules go: which linear layers (`targets`) in which transformer blocks (`layers`)."""

    targets: str | list[str] = Field("all-linear", description="Preset (qv, qkvo, mlp, all-linear) or list.")
    layers: Literal["all", "first-half", "last-half"] | list[Annotated[int, Field(ge=0)]] = Field(
        "all", description="Blocks that get adapters: all, first-half, last-half, or a list of block indices.")

    @field_validator("targets")
    @classmethod
    def _known_preset(cls, targets: str | list[str]) -> str | list[str]:
        if isinstance(targets, str) and targets not in TARGET_PRESETS:
            names = [part.strip() for part in targets.split(",")]
            listed = (f"; a list is written [{', '.join(names)}] (in a --set: 'adapter.targets=[{','.join(names)}]')"
                      if len(names) > 1 else "")
            raise ValueError(f"targets must be one of {sorted(TARGET_PRESETS)} or a list of module names{listed}")
        return targets

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, layers: str | list[int]) -> str | list[int]:
        if isinstance(layers, list) and not layers:
            raise ValueError("layers must name at least one block index (or be all, first-half, last-half)")
        return layers


class LoraAdapter(LoraPlacement):
    kind: Literal["lora"] = "lora"
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description=LORA_DROPOUT_WHY)


class DoraAdapter(LoraAdapter):
    """LoRA with a learned per-column magnitude (weight-decomposed LoRA)."""

    kind: Literal["dora"] = "dora"  # type: ignore[assignment]


class RsloraAdapter(LoraAdapter):
    """LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks keep learning."""

    kind: Literal["rslora"] = "rslora"  # type: ignore[assignment]


class PissaAdapter(LoraAdapter):
    """LoRA initialised from the base weights' principal singular vectors (which it removes from the base).

    The saved adapter is converted to a plain rank-2r LoRA that applies to the untouched base model.
    """

    kind: Literal["pissa"] = "pissa"  # type: ignore[assignment]
    svd_iters: int | None = Field(None, ge=1, description="Fast randomized SVD iterations (None: exact SVD).")


class OloraAdapter(LoraAdapter):
    """LoRA initialised from a QR decomposition of the base weights (which it removes from the base).

    The saved adapter is converted to a plain rank-2r LoRA that applies to the untouched base model.
    """

    kind: Literal["olora"] = "olora"  # type: ignore[assignment]


class LoftqAdapter(LoraAdapter):
    """Refused: PEFT 0.21 computes LoftQ's initialisation on CUDA only (its device is fixed in the code), and
    on a full-precision base it replaces the weights by their quantized approximation, which a run does not
    save: the adapter would only match that rewritten base, not the one eval, merge and export load."""

    kind: Literal["loftq"] = "loftq"  # type: ignore[assignment]

    @model_validator(mode="after")
    def _refuse(self) -> LoftqAdapter:
        raise ValueError("loftq is not supported: LoftQ rewrites the base weights into their quantized approximation, "
                         "so the adapter would not apply to the base model that eval/merge/export load, and PEFT "
                         "computes its initialisation on CUDA only. Use kind: qlora (quantized base) or kind: pissa "
                         "(SVD initialisation, saved as a plain LoRA for the untouched base) instead")


class QloraAdapter(LoraAdapter):
    """LoRA on a base loaded in 4-bit NF4 with double quantization (or 8-bit) through bitsandbytes."""

    kind: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    bits: Literal[4, 8] = 4


class AdaloraAdapter(LoraPlacement):
    """LoRA whose rank budget is reallocated during training, from init_r down to target_r on average."""

    kind: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1)
    target_r: int = Field(8, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1, description=LORA_DROPOUT_WHY)
    tinit: int = Field(0, ge=0, description="Warm-up steps before ranks are pruned.")
    tfinal: int = Field(0, ge=0, description="Final steps with the ranks fixed.")
    delta_t: int = Field(1, ge=1, description="Steps between two rank reallocations.")
    total_step: int | None = Field(None, ge=1, description="Total optimizer steps (None: the trainer's plan).")

    @model_validator(mode="after")
    def _ranks_shrink(self) -> AdaloraAdapter:
        """AdaLoRA prunes each layer's rank from init_r down to a budget of target_r on average (Zhang et al. 2023);
        a target above the start has nothing to prune to, and PEFT fails at the first reallocation."""
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) is above init_r ({self.init_r}): AdaLoRA starts every layer "
                             f"at init_r and prunes down to target_r on average. Set init_r >= target_r, e.g. "
                             f"init_r: {max(self.target_r * 3 // 2, self.target_r)}")
        return self


class Ia3Adapter(Section):
    """(IA)^3: learned scaling vectors on keys, values and the MLP input (PEFT's defaults for the architecture)."""

    kind: Literal["ia3"] = "ia3"


class PromptTuningAdapter(Section):
    """Trainable virtual-token embeddings prepended to every input; the model is untouched."""

    kind: Literal["prompt_tuning"] = "prompt_tuning"
    virtual_tokens: int = Field(20, ge=1)


class PrefixTuningAdapter(Section):
    """Trainable key/value prefixes in every attention layer (cannot train with gradient checkpointing)."""

    kind: Literal["prefix_tuning"] = "prefix_tuning"
    virtual_tokens: int = Field(20, ge=1)


class PTuningAdapter(Section):
    """P-tuning: virtual tokens produced by a small trainable MLP encoder."""

    kind: Literal["p_tuning"] = "p_tuning"
    virtual_tokens: int = Field(20, ge=1)
    encoder_hidden_size: int = Field(128, ge=1)


class FullAdapter(Section):
    """Full fine-tuning: every weight trains; the run saves a whole model in model/."""

    kind: Literal["full"] = "full"


class PartialAdapter(Section):
    """Train only the last N transformer blocks (and optionally the final norm and the LM head)."""

    kind: Literal["partial"] = "partial"
    last_blocks: int = Field(2, ge=1)
    train_norm: bool = True
    train_lm_head: bool = Field(False, description="With tied embeddings this also trains the input embeddings.")


class HftAdapter(Section):
    """Half fine-tuning: training runs in rounds; each round trains half the blocks (even, then odd, ...)."""

    kind: Literal["hft"] = "hft"
    round_steps: int = Field(50, ge=1, description="Optimizer steps per round.")


Adapter = Annotated[LoraAdapter | DoraAdapter | RsloraAdapter | PissaAdapter | OloraAdapter | LoftqAdapter
                    | QloraAdapter | AdaloraAdapter | Ia3Adapter | PromptTuningAdapter | PrefixTuningAdapter
                    | PTuningAdapter | FullAdapter | PartialAdapter | HftAdapter, Field(discriminator="kind")]


DISTRIBUTED_STRATEGIES = ("none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")


class DistributedSection(Section):
    """How several processes share one training run (`tunesmith train --nproc N` launches them through
    `accelerate launch`). Mixed precision is training.precision; the data order is the same on every rank."""

    strategy: Literal["none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = Field(
        "none", description="none: one process. ddp: a full copy per process, gradients averaged (CPU too, over "
                            "gloo). fsdp: weights, gradients and optimizer state sharded (PyTorch FSDP2; CUDA). "
                            "deepspeed-zero2: gradients and optimizer state sharded; deepspeed-zero3: weights too "
                            "(DeepSpeed; CUDA; pip install 'tunesmith[distributed]').")
    offload_optimizer: bool = Field(False, description="Keep the optimizer state in CPU memory (fsdp, deepspeed-*).")
    offload_params: bool = Field(False, description="Keep the sharded weights in CPU memory (fsdp, deepspeed-zero3).")
    shard_reference: bool = Field(True, description="DPO/KTO whole-model training: whether `tunesmith plan` counts the "
                                                    "frozen reference copy as sharded like the trained model (fsdp, "
                                                    "deepspeed-zero3, where TRL prepares it with the same strategy). "
                                                    "Read by the plan only; training follows TRL.")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, raw: Any) -> Any:
        """`training.distributed: ddp` is short for `training.distributed: {strategy: ddp}`."""
        return {"strategy": raw} if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _knobs_fit_strategy(self) -> DistributedSection:
        if self.offload_optimizer and self.strategy in ("none", "ddp"):
            raise ValueError(f"offload_optimizer needs a sharded strategy (fsdp, deepspeed-zero2/3), not "
                             f"{self.strategy!r}")
        if self.offload_params and self.strategy not in ("fsdp", "deepspeed-zero3"):
            raise ValueError(f"offload_params needs fsdp or deepspeed-zero3 (the strategies that shard the "
                             f"weights), not {self.strategy!r}")
        return self

    @property
    def shards_weights(self) -> bool:
        return self.strategy in ("fsdp", "deepspeed-zero3")

    @property
    def shards_optimizer(self) -> bool:
        return self.strategy in ("fsdp", "deepspeed-zero2", "deepspeed-zero3")


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows. Left out (with max_steps and "
                                                  "time_budget): 1, or up to 3 whole epochs for a small dataset, "
                                                  "enough for 50 optimizer steps (train/defaults.py).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="auto: by adapter kind and base size (train/defaults.py: 1e-3 for LoRA under 1B "
                            "parameters, 2e-4 up to 20B, 1e-4 above; 2e-5 for whole-model training).")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="The share of the steps the learning rate rises "
                                "from 0 over, in whole steps rounded down: none in a run shorter than 1/ratio steps "
                                "(transformers rounds up, so its first step would train at rate 0).")
    weight_decay: float = Field(0.0, ge=0)
    packing: bool | Literal["auto"] = Field(
        "auto", description="Join rows into max_length rows. auto: only where packing costs no extra attention work: "
                            "CPT's plain blocks, and SFT on a model loaded with a variable-length attention kernel "
                            "(FlashAttention). Elsewhere rows are batched by similar length, which wastes little "
                            "padding without making each packed row attend over the whole pack.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 mixed precision on GPUs that support it; on a CPU fp32, with a LoRA's frozen "
                            "base linears in bf16 (SFT, CPT, DPO, ORPO, KTO, SimPO) where this CPU multiplies bf16 "
                            "at 2x fp32 or more (AMX, AVX512-BF16; train/frozen_matmuls.py). fp32: fp32 throughout. "
                            "bf16/fp16: mixed precision (autocast).")
    fused_lora: bool = Field(True, description="A LoRA layer adds its update into the frozen linear's output in one "
                                               "autograd step (train/fused_lora.py): the same gradients as PEFT's "
                                               "forward, a faster step and less memory. false: PEFT's own forward. "
                                               "Layers it does not cover (dropout, DoRA, quantized bases, autocast) "
                                               "run PEFT's forward either way.")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="SFT: the held-out loss on data.eval every this many "
                                                          "optimizer steps (and at the last), logged as eval_loss "
                                                          "and drawn in plots/loss.png beside the training loss "
                                                          "(transformers' eval_strategy steps). Each pass reads the "
                                                          "whole eval split and counts against training.time_budget. "
                                                          "null (the default): no evaluation during training.")
    save_steps: int = Field(100, ge=1, description="Write a checkpoint every this many optimizer steps (and at "
                                                  "the end); `tunesmith train --resume` continues from the newest.")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the newest N complete checkpoints; older ones are "
                                                       "removed once a newer one is complete.")
    max_bad_steps: int = Field(3, ge=1, description="Updates in a row with a non-finite loss or gradient that are "
                                                    "skipped before the run stops.")
    init_from: str | None = Field(None, description="A finished run directory or a PEFT adapter folder whose "
                                                    "trained adapter this run starts from, with a new optimizer and "
                                                    "schedule (relative to the recipe). `tunesmith train "
                                                    "--init-from` sets it.")
    time_budget: str | None = Field(None, description="Wall time for the whole `tunesmith train`, e.g. 10m, 90s, "
                                                      "1h30m (loading the model and the replay answers count): the "
                                                      "steps are set to fill what is left (at most 3 epochs) from a "
                                                      "measurement of this machine's step time; max_steps/epochs win "
                                                      "when given, and training stops at the budget either way.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seeds Python, NumPy and torch (transformers' set_seed, "
                                                       "which NumPy limits to 0 ... 2**32 - 1).")
    distributed: DistributedSection = Field(
        default_factory=DistributedSection,
        description="Several processes on one run: none | ddp | fsdp | deepspeed-zero2 | deepspeed-zero3, or a "
                    "mapping with `strategy` and the offload knobs. `tunesmith train --nproc N` launches them.")

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"{value} steps: give at least 1 optimizer step, or -1 to train by training.epochs")
        return value

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> str | None:
        """A duration (10m, 1h30m), or a bare number of seconds (YAML and --set read `90` as a number)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{value!r} is not a duration; write e.g. 10m, 90s or 1h30m")
        duration_seconds(str(value))
        return str(value)

    @property
    def time_budget_seconds(self) -> float | None:
        return duration_seconds(self.time_budget) if self.time_budget is not None else None

    @property
    def steps_given(self) -> bool:
        """Whether the recipe itself says how long to train (max_steps, or epochs written out)."""
        return bool(self.steps_keys)

    @property
    def steps_keys(self) -> list[str]:
        """The keys by which the recipe says how long to train, as `training.max_steps: 60` ([] where it does not)."""
        return ([f"training.max_steps: {self.max_steps}"] if self.max_steps > 0 else []) + (
            [f"training.epochs: {self.epochs:g}"] if "epochs" in self.model_fields_set else [])


TIME_BUDGET_METHODS = ("sft", "cpt", "dpo", "orpo", "simpo", "kto")  # GRPO's steps also generate
# Methods whose trainer takes the replay anchor (train/replay.py `anchored`): one loss per micro-batch it can join;
# sft alone also takes replay rows as training rows (data.replay.loss sft).
ANCHORED_METHODS = ("sft", "cpt", "dpo", "kto", "orpo", "simpo")
# Methods that replay unless the recipe says otherwise, measured on the bundled recipes (README "Keeping what the base
# could do"); cpt takes the anchor when asked, and kept no more probes with it on recipes/cpt.yaml.
REPLAY_BY_DEFAULT_METHODS = ("sft", "dpo", "kto", "orpo", "simpo")


def default_replay_ratio(method_kind: str, replay_loss: str, null_space: bool = False) -> float:
    """data.replay.ratio when the recipe leaves it out: DEFAULT_REPLAY_RATIO for supervised fine-tuning (either
    loss) and, through the KL anchor only (`replay_loss` kl), for the preference methods, NULL_SPACE_REPLAY_RATIO
    where the null space will be on beside the anchor (`null_space`, from `null_space_planned`); 0 otherwise."""
    if method_kind == "sft" or (method_kind in REPLAY_BY_DEFAULT_METHODS and replay_loss == "kl"):
        return NULL_SPACE_REPLAY_RATIO if null_space and replay_loss == "kl" else DEFAULT_REPLAY_RATIO
    return 0.0


def null_space_planned(null_space: float | None, method_kind: str, adapter_kind: str, replay_loss: str,
                       strategy: str) -> bool:
    """Whether the null space will be on if the KL anchor replays: data.replay.null_space as the recipe sets it, or
    its default (`default_null_space`) where the recipe leaves it out."""
    if null_space is not None:
        return null_space > 0
    return default_null_space(method_kind, adapter_kind, replay_loss == "kl", strategy) > 0


NULL_SPACE_STRATEGIES = ("none", "ddp")  # the ones that hold whole A matrices in each process


def default_null_space(method_kind: str, adapter_kind: str, anchored: bool, strategy: str) -> float:
    """data.replay.null_space when the recipe leaves it out: DEFAULT_NULL_SPACE for supervised fine-tuning of a
    LoRA-family adapter beside the KL anchor (`anchored`) without sharding; 0 otherwise (the preference methods
    have not been measured with it)."""
    fits = adapter_kind in NULL_SPACE_KINDS and anchored and strategy in NULL_SPACE_STRATEGIES
    return DEFAULT_NULL_SPACE if method_kind == "sft" and fits else 0.0


DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def duration_seconds(text: str) -> float:
    """Seconds in a duration like `10m`, `90s`, `1h30m` or a bare number of seconds. Raises ValueError."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif re.fullmatch(r"(\s*\d+(\.\d+)?\s*[hms])+", text):
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in DURATION_PART.findall(text))
    else:
        raise ValueError(f"{text!r} is not a duration; write e.g. 10m, 90s or 1h30m")
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


EVAL_METRICS = ("loss", "perplexity", "exact_match", "contains", "regex", "json_valid", "json_schema",
                "json_fields", "rouge_l", "chrf", "label_accuracy", "numeric_match", "tool_call_match",
                "tool_name_match", "tool_call_decision")
# What `eval.task_metric: auto` picks for each kind of training answer (data/answers.py decides the kind).
# The first task metric of each is the headline score (the sweep table and summaries show it).
ANSWER_KIND_METRICS = {
    "json": ("loss", "perplexity", "json_fields", "json_valid"),
    "labels": ("loss", "perplexity", "exact_match", "label_accuracy"),
    "numbers": ("loss", "perplexity", "numeric_match", "exact_match"),
    "short": ("loss", "perplexity", "exact_match", "chrf"),
    "free_text": ("loss", "perplexity", "chrf", "rouge_l"),
    "tool_calls": ("loss", "perplexity", "tool_call_match", "tool_name_match", "tool_call_decision", "chrf"),
}


class JudgeSection(Section):
    """LLM-as-judge: an OpenAI-compatible chat endpoint scores each answer (score) or picks the better of base
    and tuned (pairwise, asked in both orders so that position bias cancels)."""

    url: str = Field(..., description="Base URL of the API, e.g. http://localhost:8000/v1 (or the full "
                                      ".../chat/completions address).")
    model: str = Field(..., description="The judge model's name, as the endpoint knows it.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (default: "
                                                      "OPENAI_API_KEY, sent to api.openai.com only); sent as a "
                                                      "Bearer token.")
    rubric: str | None = Field(None, description="A text file with the judging criteria (relative to the recipe); "
                                                 "default: helpfulness and agreement with the reference.")
    mode: Literal["score", "pairwise"] = "score"
    max_examples: int | None = Field(None, ge=1, description="Judge only the first N held-out examples.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one judge reply.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        check_http_url(value)
        return value


class LmEvalSection(Section):
    """lm-evaluation-harness tasks run on base and tuned (needs `pip install tunesmith[eval]`)."""

    tasks: list[str] = Field(default_factory=lambda: ["tunesmith_general_mc"], min_length=1,
                             description="Task names from include_path (default: tunesmith's bundled local task).")
    include_path: str | None = Field(None, description="A folder of lm-eval task YAMLs (relative to the recipe); "
                                                       "relative data_files in them resolve from the YAML's folder.")
    limit: int | None = Field(None, ge=1, description="Documents per task (all when unset).")
    num_fewshot: int | None = Field(None, ge=0)
    batch_size: int = Field(8, ge=1)


def any_constrained(baselines: list[str]) -> bool:
    """Whether any of the baselines named decodes constrained (constrained, few_shot_constrained)."""
    return any(name.endswith("constrained") for name in baselines)


class EvalSection(Section):
    task_metric: Literal["auto", "json_fields", "exact_match", "none"] = Field(
        "auto", description="Used when `metrics` is empty. auto: chosen from the training answers (JSON objects: "
                            "json_valid + json_fields; a small closed set of labels: exact_match + label_accuracy; "
                            "free text: chrf + rouge_l); or one task metric, as in older recipes.")
    metrics: list[str] = Field(default_factory=list, description=(
        "Scores per held-out example: " + ", ".join(EVAL_METRICS) + ", or a user metric `module:function` / "
        "`path/to/file.py:function` taking (prediction, reference) and returning a float or a dict of floats."))
    regex: str | None = Field(None, description="For the `regex` metric: the pattern a whole answer must match.")
    json_schema: str | None = Field(None, description="For `json_schema`: a JSON Schema file (relative to the recipe).")
    max_examples: int | None = Field(None, ge=1)
    max_new_tokens: int | Literal["auto"] = Field(
        "auto", description="Tokens generated per answer. auto: the longest reference answer of the rows scored, "
                            "in tokens, x 1.25 + 8 (at least 16, at most 1024, or 4096 where the references reason "
                            "first); an answer longer than that cannot match any reference, and the untuned base "
                            "would otherwise ramble to a fixed limit.")
    batch_size: int = Field(16, ge=1)
    compare_base: bool = True
    probes: bool = Field(True, description="Forgetting probes: general questions and text the base model handles, "
                                           "asked of base and tuned to see whether tuning broke them.")
    probe_file: str | None = Field(None, description="Your own probes (JSONL: prompt, check, answer, category), "
                                                     "relative to the recipe; default: the bundled set.")
    probe_margin: float = Field(0.05, ge=0, le=1, description="A regression is flagged when probe accuracy falls "
                                                              "more than this below base (absolute, 0..1).")
    probe_perplexity_margin: float = Field(0.05, ge=0, description="... or when perplexity on the general-text "
                                                                   "slice rises more than this fraction above base.")
    probe_max_new_tokens: int = Field(24, ge=1, description="Tokens generated per probe answer (they are short).")
    judge: JudgeSection | None = None
    lm_eval: LmEvalSection | None = None
    baselines: list[Literal["zero_shot", "few_shot", "constrained", "few_shot_constrained"]] = Field(
        default_factory=list, description="Cheaper alternatives scored beside base and tuned on the same rows: "
        "zero_shot (the base as it is), few_shot (training examples as earlier chat turns), constrained (decoding "
        "held to the answers' structure), few_shot_constrained (both). `tunesmith baseline RECIPE` runs them "
        "before any training.")
    few_shot_k: int = Field(4, ge=1, le=64, description="Training examples put in front of each few-shot prompt.")
    few_shot_select: Literal["seeded", "similar"] = Field(
        "seeded", description="seeded: the same k examples for every prompt, drawn with training.seed; similar: "
                              "the k training prompts sharing the most words with each prompt.")
    choices: list[str] | None = Field(None, description="Constrained decoding: the closed set of answers (labels); "
                                                        "default: inferred from the training answers.")
    constrain_tuned: bool = Field(False, description="Decode the tuned model constrained too (the same structure "
                                                     "the constrained baseline uses).")

    @model_validator(mode="after")
    def _metrics_usable(self) -> EvalSection:
        """Name unknown metrics and missing settings before any model is loaded."""
        unknown = [m for m in self.metrics if m not in EVAL_METRICS and ":" not in m]
        if unknown:
            raise ValueError(f"eval.metrics: unknown {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(EVAL_METRICS)}, or a user metric module:function / file.py:function")
        for metric, setting in (("regex", self.regex), ("json_schema", self.json_schema)):
            if metric in self.metrics and not setting:
                raise ValueError(f"eval.metrics has {metric!r} but eval.{metric} is not set: add it to eval")
        check_regex("eval.regex", self.regex)
        if self.choices is not None and not [c for c in self.choices if c.strip()]:
            raise ValueError("eval.choices is empty: list the answers decoding may give, or leave it out to infer "
                             "them from the training answers")
        return self

    @property
    def wants_constraint(self) -> bool:
        """Whether eval decodes anything constrained (a constrained baseline, or constrain_tuned)."""
        return self.constrain_tuned or any_constrained(self.baselines)

    def chosen_metrics(self, answer_kind: str | None = None) -> list[str]:
        """`metrics` when given, else `task_metric` (loss and perplexity are always measured).

        `auto` resolves from `answer_kind` (tool_calls, json, labels, numbers, short or free_text: what data.json
        `answers` records); without one it is loss and perplexity alone.
        """
        if self.metrics:
            return list(self.metrics)
        if self.task_metric == "auto":
            return list(ANSWER_KIND_METRICS.get(answer_kind or "", ("loss", "perplexity")))
        return ["loss", "perplexity"] + ([self.task_metric] if self.task_metric != "none" else [])


EXPORT_FORMATS = ("adapter", "merged", "gguf", "gguf-lora", "ollama")
# Adapter kinds whose saved adapter is a plain LoRA (PiSSA/OLoRA are converted to one when saved), the only
# kind a GGUF LoRA file (llama.cpp --lora, Ollama ADAPTER) can hold.
GGUF_LORA_KINDS = ("lora", "rslora", "pissa", "olora", "qlora")


class ExportSection(Section):
    formats: list[Literal["adapter", "merged", "gguf", "gguf-lora", "ollama"]] = Field(
        default_factory=lambda: ["adapter", "merged"])
    quant: str = Field("F16", description="GGUF tensor type for the gguf and ollama formats, e.g. F16 or Q8_0.")
    max_shard_size: str = Field("5GB", pattern=r"^\d+(\.\d+)?\s*[KMGTkmgt][Bb]$",
                                description="Merged safetensors are split into shards of at most this size "
                                            "(KB, MB, GB or TB, e.g. 5GB).")
    ollama_adapter: bool = Field(False, description="Ollama: FROM the base GGUF + ADAPTER the LoRA GGUF, "
                                                    "instead of one merged GGUF.")


def union_tags(*unions: Any) -> set[str]:
    """Every `kind` literal of the tagged unions: pydantic puts the chosen one in error paths."""
    variants = [arg for union in unions for arg in getattr(union.__origin__, "__args__", (union.__origin__,))]
    return {tag for variant in variants for tag in variant.model_fields["kind"].annotation.__args__}


UNION_TAGS = union_tags(Method, Adapter)


RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


class Recipe(Section):
    name: str = Field("run", description="The run folders' prefix (name-YYYYMMDD-HHMMSS): letters, digits, '.', '_' "
                                         "and '-'.")
    runs_dir: str = "runs"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    method: Method = Field(default_factory=SFTMethod)
    adapter: Adapter = Field(default_factory=LoraAdapter)
    training: TrainingSection = Field(default_factory=TrainingSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)
    base_dir: str = Field(".", description="Directory relative paths resolve against (set on load).")

    @field_validator("name")
    @classmethod
    def check_name(cls, value: str) -> str:
        if not RUN_NAME.fullmatch(value) or not value.strip("."):
            raise ValueError("the name is each run folder's prefix (name-YYYYMMDD-HHMMSS): letters, digits, '.', '_' "
                             "and '-' only, not all dots (e.g. legumes-v1.2)")
        return value

    defaulted_keys: list[str] = Field(
        default_factory=list, description="Written by tunesmith in a run directory's recipe.yaml: the keys the recipe "
                                          "left to the defaults. Every value is written out, and these still count "
                                          "as not given while they hold their default (`unset_keys`).")

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, raw: Any) -> Any:
        """A section written without `kind` means the default variant (sft, lora)."""
        if isinstance(raw, dict):
            for section, kind in (("method", "sft"), ("adapter", "lora")):
                if isinstance(raw.get(section), dict) and "kind" not in raw[section]:
                    raw = {**raw, section: {"kind": kind, **raw[section]}}
        return raw

    @model_validator(mode="after")
    def _defaulted_keys_count_as_not_given(self) -> Recipe:
        """A run's recipe.yaml writes every default out; a key it lists in `defaulted_keys` that still holds its
        default is not given, as in the recipe the run started from (so `training.epochs: 1.0` written out does not
        stop the small-dataset epochs choice, nor `grad_accum: 1` the CPU micro-batch split). A value edited since
        counts as given."""
        for key in self.defaulted_keys:
            *path, name = key.split(".")
            section: Any = self
            for part in path:
                section = getattr(section, part, None)
            field = type(section).model_fields.get(name) if isinstance(section, BaseModel) else None
            if field is None or field.is_required():
                continue
            value, default = getattr(section, name), field.get_default(call_default_factory=True)
            if plain(value) == plain(default):
                section.model_fields_set.discard(name)
        return self

    @model_validator(mode="after")
    def _adapter_fits_training(self) -> Recipe:
        """Refuse adapter/training pairs that crash at the first step, before any model is loaded."""
        if self.adapter.kind == "prefix_tuning" and self.training.gradient_checkpointing:
            raise ValueError(
                "adapter.kind=prefix_tuning cannot train with training.gradient_checkpointing=true: the checkpointed "
                "attention sees the prefix keys but not a mask that covers them (transformers 5, PEFT 0.21). "
                "Set training.gradient_checkpointing: false, or use kind: prompt_tuning or p_tuning")
        return self

    @model_validator(mode="after")
    def _reward_model_fits(self) -> Recipe:
        """A reward model scores with a head, not an LM: refuse adapters and exports that assume an LM head."""
        if self.method.kind != "reward":
            return self
        if self.adapter.kind not in REWARD_ADAPTER_KINDS:
            raise ValueError(f"method.kind=reward cannot train adapter.kind={self.adapter.kind}: the score head reads "
                             "the last real token, which virtual tokens, prefixes and rewritten bases do not fit. "
                             f"Use adapter.kind {', '.join(REWARD_ADAPTER_KINDS)}")
        if self.adapter.kind == "partial" and self.adapter.train_lm_head:
            raise ValueError("adapter.train_lm_head=true does not apply to method.kind=reward: a reward model has no "
                             "LM head (its score head always trains). Set adapter.train_lm_head: false")
        whole_model = self.adapter.kind in WHOLE_MODEL_KINDS  # its model/ folder holds the score head: merged copies it
        if "formats" not in self.export.model_fields_set:  # the default's `merged` would fail after training
            self.export.formats = ["adapter", "merged"] if whole_model else ["adapter"]
            self.export.model_fields_set.discard("formats")
        lm_formats = [f for f in self.export.formats if f in ("gguf", "gguf-lora", "ollama")
                      or (f == "merged" and not whole_model)]
        if lm_formats:
            raise ValueError(f"export.formats {lm_formats} need a language model; a reward model outputs one score "
                             "(merging its adapter into the base would drop the score head). "
                             "Use export.formats: [adapter]")
        return self

    @model_validator(mode="after")
    def _exports_fit_adapter(self) -> Recipe:
        """A GGUF LoRA holds plain LoRA factors only: refuse it for other adapter kinds before training."""
        wants_lora_file = "gguf-lora" in self.export.formats or (
            "ollama" in self.export.formats and self.export.ollama_adapter)
        if wants_lora_file and self.adapter.kind not in GGUF_LORA_KINDS:
            what = "export.formats gguf-lora" if "gguf-lora" in self.export.formats else "export.ollama_adapter: true"
            raise ValueError(f"{what} needs a plain LoRA adapter, and adapter.kind={self.adapter.kind} is not one "
                             "(a GGUF LoRA file holds LoRA factors only; kinds that fit: "
                             f"{', '.join(GGUF_LORA_KINDS)}). "
                             "Export the merged model instead: export.formats: [gguf] (or ollama with "
                             "ollama_adapter: false)")
        return self

    @model_validator(mode="after")
    def _grpo_groups_fit_the_batch(self) -> Recipe:
        """TRL samples whole groups per generation batch (batch_size x grad_accum completions), so the group size
        must divide it: refused here, so that plan, doctor and a sweep's checks see it before anything trains."""
        if isinstance(self.method, GRPOMethod):
            completions, group = self.training.batch_size * self.training.grad_accum, self.method.num_generations
            if completions % group:
                raise ValueError(f"training.batch_size x grad_accum is {completions} completions, not a multiple of "
                                 f"method.num_generations ({group}): GRPO scores whole groups of completions per "
                                 f"prompt. Set training.batch_size to a multiple of {group} (e.g. {group * 2}: two "
                                 "prompts per step)")
        return self

    @model_validator(mode="after")
    def _budget_and_replay_fit_method(self) -> Recipe:
        """training.time_budget measures forward/backward steps, and replay adds answered rows: refuse the methods
        whose steps or rows are another kind, before anything loads."""
        if self.training.time_budget and self.method.kind not in TIME_BUDGET_METHODS:
            raise ValueError(f"training.time_budget works with method.kind {', '.join(TIME_BUDGET_METHODS)}; a "
                             f"{self.method.kind} step is another kind of work. Set training.max_steps instead")
        if self.training.eval_steps and self.method.kind != "sft":
            raise ValueError(f"training.eval_steps works with method.kind sft (its trainer is given data.eval), not "
                             f"{self.method.kind}; `tunesmith eval` scores the run after training. Remove the key")
        replay, loss = self.data.replay, self.data.replay.resolved_loss(self.adapter.kind)
        if replay.ratio is None:  # the default: replay where it applies, lighter beside the null space
            replay.ratio = default_replay_ratio(self.method.kind, loss, null_space_planned(
                replay.null_space, self.method.kind, self.adapter.kind, loss, self.training.distributed.strategy))
            replay.model_fields_set.discard("ratio")  # a default, not the recipe's
        if self.data.replay.ratio and self.method.kind not in ANCHORED_METHODS:
            raise ValueError(f"data.replay works with method.kind {', '.join(ANCHORED_METHODS)}, not "
                             f"{self.method.kind} (a reward model has no next-token distribution to keep, and "
                             f"GRPO's sampled steps do not take the anchor). Set data.replay.ratio: 0")
        if self.data.replay.ratio and self.method.kind != "sft" and self.adapter.kind in PROMPT_LEARNING_KINDS:
            raise ValueError(f"data.replay with method.kind={self.method.kind} trains the replay rows through the KL "
                             f"anchor only, and the anchor runs them as plain token rows, while adapter.kind="
                             f"{self.adapter.kind} adds virtual tokens to every row. Set data.replay.ratio: 0, or "
                             f"change adapter.kind")
        if (self.data.replay.ratio and self.method.kind != "sft"
                and self.data.replay.resolved_loss(self.adapter.kind) != "kl"):
            raise ValueError(f"data.replay with method.kind={self.method.kind} trains the replay rows through the KL "
                             f"anchor only (data.replay.loss: kl; the sft loss joins answered rows to supervised "
                             f"fine-tuning's), and the anchor needs an adapter that leaves the base untouched "
                             f"(adapter.kind {', '.join(KL_ANCHOR_KINDS[:4])}, ...). Set data.replay.ratio: 0, "
                             f"or change adapter.kind")
        self.check_null_space()
        if self.data.replay.loss == "kl" and self.adapter.kind in PROMPT_LEARNING_KINDS:
            raise ValueError(f"data.replay.loss=kl runs the replay rows as plain token rows, and adapter.kind="
                             f"{self.adapter.kind} adds virtual tokens to every row it sees. Use data.replay.loss: "
                             "sft (or auto), which trains the replay rows beside the task's")
        if self.data.replay.loss == "kl" and self.adapter.kind not in BASE_PRESERVING_KINDS:
            raise ValueError(f"data.replay.loss=kl needs the untouched base as its reference, and adapter.kind="
                             f"{self.adapter.kind} changes the base weights. Use data.replay.loss: sft (or auto)")
        return self

    def check_null_space(self) -> None:
        """Fill data.replay.null_space when the recipe leaves it out (`default_null_space`); asked for where it cannot
        apply, it is refused with the reason (ValueError, reported against the key)."""
        replay, strategy = self.data.replay, self.training.distributed.strategy
        anchored = bool(replay.ratio) and replay.resolved_loss(self.adapter.kind) == "kl"
        if replay.null_space is None:
            replay.null_space = default_null_space(self.method.kind, self.adapter.kind, anchored, strategy)
            replay.model_fields_set.discard("null_space")  # a default, not the recipe's (the chosen table says so)
        if not replay.null_space:
            return
        if self.adapter.kind not in NULL_SPACE_KINDS:
            raise ValueError(f"data.replay.null_space keeps a LoRA's A matrices off general inputs; adapter.kind="
                             f"{self.adapter.kind} has none. Use adapter.kind {', '.join(NULL_SPACE_KINDS)}, or "
                             f"set data.replay.null_space: 0")
        if not anchored:
            raise ValueError("data.replay.null_space reads the replay rows of the KL anchor, and this recipe has "
                             "none (data.replay.ratio 0, or loss sft). Set data.replay.ratio, or null_space: 0")
        if strategy not in NULL_SPACE_STRATEGIES:
            raise ValueError(f"data.replay.null_space projects whole A matrices, which training.distributed="
                             f"{strategy} shards across processes. Use ddp, or set data.replay.null_space: 0")

    def resolve_path(self, value: str) -> Path:
        """Resolve a path written in the recipe relative to the recipe file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()


DATA_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".txt", ".md")  # never a recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `a.b=value` overrides, and validate it."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path} is a folder; a recipe is one YAML file.",
                          f"Name the file, e.g. {path / 'recipe.yaml'} (the bundled ones are in recipes/).")
    if not path.is_file():
        raise RecipeError(f"Recipe file not found: {path}", "Check the path, or run `tunesmith quickstart`.")
    if path.suffix.lower() in DATA_SUFFIXES:
        raise RecipeError(f"{path} is a data file; this command takes a recipe (a YAML file whose data.train names "
                          "the data).", f"Write a recipe with data: {{train: {path}}} (recipes/quickstart.yaml is one "
                          f"to copy), or check the file itself with `tunesmith data inspect {shell_arg(path)}`.")
    text = read_recipe_text(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        where = str(exc).replace('"<unicode string>"', f'"{path}"')
        raise RecipeError(f"{path}: not valid YAML: {where}", "Fix the YAML syntax at that line.") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: the recipe must be a mapping of sections, got {type(raw).__name__}.")
    if "base_dir" in raw:  # a run's recipe.yaml: the folder its project was in when the run started
        raw["base_dir"] = str(moved_base_dir(path, raw))
    raw.setdefault("base_dir", str(path.resolve().parent))
    file_kinds = {section: (raw.get(section) or {}).get("kind") or Recipe.model_fields[section].default_factory().kind
                  for section in ("adapter", "method") if isinstance(raw.get(section) or {}, dict)}
    for item in overrides or []:
        apply_override(raw, item)
    drop_keys_of_the_kind_replaced(raw, overrides or [], file_kinds)
    return validate_recipe(raw, source=path, text=text, overrides=overrides)


BASE_DIR_SEARCH_DEPTH = 4  # ancestors of a run's recipe.yaml searched: RUN, runs/, the project, one above


def moved_base_dir(path: Path, raw: dict[str, Any]) -> Path:
    """Where a recipe that records a `base_dir` (a run's recipe.yaml) reads its relative paths: that folder while it
    holds the recipe's data.train; after the project was moved or copied elsewhere, a folder of the recorded one's name
    in runs/ or the project (a recipe in `recipes/` naming `../data/train.jsonl`), else the nearest of the recipe
    file's ancestors (a run or sweep folder aside: a run saves its split rows as data/train.jsonl), where data.train
    and data.eval are, said on stderr. The recorded folder stays where none does (the missing file is then named where
    it is read)."""
    import sys

    recorded = Path(str(raw["base_dir"]))
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    train = data.get("train")
    if not isinstance(train, str) or Path(train).is_absolute() or (recorded / train).is_file():
        return recorded
    needed = [name for name in (train, data.get("eval")) if isinstance(name, str) and not Path(name).is_absolute()]
    ancestors = [folder for folder in list(path.resolve().parents)[:BASE_DIR_SEARCH_DEPTH]
                 # a run keeps its own split rows under data/: never the project's files
                 if not (folder / "run.json").is_file() and not (folder / "sweep.json").is_file()]
    # the recipe's own folder inside runs/ or the project (recipes/ beside the moved runs/, where `../data/...`
    # paths start; no further up, where a folder of that name is another project), then the levels, nearest first
    for folder in [level / recorded.name for level in ancestors[:2]] + ancestors:
        if all((folder / name).is_file() for name in needed):
            print(f"note: {path} reads its relative paths from {recorded}, where its data.train {train} is no longer "
                  f"(the project moved): reading them from {folder}, where it is.", file=sys.stderr, flush=True)
            return folder
    return recorded


def read_recipe_text(path: Path) -> str:
    """The recipe's text: UTF-8 (a byte-order mark dropped), or UTF-16 with its byte-order mark (what PowerShell's
    `>` writes). Raises RecipeError for anything else, with the command that converts it."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}).",
                          f"Save it as UTF-8, e.g. `iconv -f cp1252 -t utf-8 {path} > {path.stem}.utf8{path.suffix}` "
                          "(from Windows' encoding), or re-save it as UTF-8 in your editor.") from None


def drop_keys_of_the_kind_replaced(raw: dict[str, Any], overrides: list[str], file_kinds: dict[str, Any]) -> None:
    """Where `--set adapter.kind=...` (or method.kind) chose another kind than the file's (`file_kinds`), the file's
    keys of that section which its kind takes and the new kind does not are left out: `--set adapter.kind=full` on a
    LoRA recipe means a full fine-tune, not an error about its r and alpha. Keys given with --set, and keys neither
    kind takes (a misspelt one), are kept for validation to name."""
    set_keys = {item.partition("=")[0].strip() for item in overrides}
    for section in ("adapter", "method"):
        values = raw.get(section)
        if f"{section}.kind" not in set_keys or not isinstance(values, dict):
            continue
        old, new = kind_member(section, file_kinds.get(section)), kind_member(section, values.get("kind"))
        if old is None or new is None or old is new:
            continue  # an unknown kind (validation names it), or the file's own
        for key in [key for key in values if key in old.model_fields and key not in new.model_fields]:
            if f"{section}.{key}" not in set_keys:
                del values[key]


def kind_member(section: str, kind: Any) -> type[BaseModel] | None:
    """The model of `section`'s union (adapter, method) whose `kind` is `kind`; None where none is."""
    members = [arg for arg in typing.get_args(Recipe.model_fields[section].annotation)
               if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return next((member for member in members
                 if kind in typing.get_args(member.model_fields["kind"].annotation)), None)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `--set a.b=value` override; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"Bad override {item!r}.", "Write overrides as --set section.key=value.")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an optional section a run's recipe.yaml holds as null (eval.judge)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise RecipeError(f"Override {item!r}: {part!r} is not a section.")
        node = child
    node[parts[-1]] = paths_from_command_line(override_value(value), parts[-1]) if len(parts) > 1 \
        else override_value(value)
    if isinstance(raw.get("defaulted_keys"), list):  # a run's recipe.yaml: what --set writes is given
        given = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        raw["defaulted_keys"] = [k for k in raw["defaulted_keys"] if k not in given]


def override_value(text: str) -> Any:
    """A `--set` value parsed as YAML (numbers, lists, null), except that text YAML would read as a mapping only
    because it holds ": " (`data.system_prompt=Reply with one word: yes or no.`) stays text; a mapping is written
    in braces ({a: 1})."""
    if not text.strip():
        return None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML (an unclosed quote, a stray colon): the text as typed
    return text if isinstance(parsed, dict) and not text.lstrip().startswith("{") else parsed


PATH_KEYS = frozenset({"train", "eval", "source", "path", "init_from", "json_schema", "rubric", "include_path",
                       "probe_file", "chat_template"})


# A data.train / data.eval value ending so is a file name, also when no such file exists (yet): it is read from the
# current folder, and a "not found" names that folder.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


USER_FUNCTION = re.compile(r"^[^:]+\.py:[A-Za-z_]\w*$")  # eval.metrics / method.rewards' `file.py:function`


def paths_from_command_line(value: Any, key: str) -> Any:
    """`path_from_command_line` for a --set value under `key`: a path key's value, each path key of a mapping given
    whole (`eval.judge={url: ..., rubric: rubric.txt}`), and each `file.py:function` of a list (`eval.metrics`)."""
    if isinstance(value, str) and USER_FUNCTION.match(value):  # a reward's name
        return function_from_command_line(value)
    if isinstance(value, dict):
        return {k: paths_from_command_line(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [function_from_command_line(item) if isinstance(item, str) and USER_FUNCTION.match(item)
                else paths_from_command_line(item, key) if isinstance(item, dict) else item for item in value]
    return path_from_command_line(value, key) if key in PATH_KEYS else value


def function_from_command_line(spec: str) -> str:
    """`mine.py:score` typed after --set: the file read from the current folder where it is there."""
    file, _, function = spec.rpartition(":")
    return f"{path_from_command_line(file)}:{function}"


def path_from_command_line(value: Any, key: str = "") -> Any:
    """A relative path typed after `--set` means what the shell means by it: from the current folder, not from
    the recipe's (which is where paths written in the recipe file resolve). Made absolute only when it names
    something there (or, for data.train / data.eval, when it is a data file's name; for model.chat_template, a
    .jinja file's), so a Hub id
    (`HuggingFaceTB/SmolLM2-135M`) or a word (`bundled`) stays as written."""
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    here = Path.cwd() / value
    data_file = (key in ("train", "eval") and value.lower().endswith(DATA_FILE_SUFFIXES)) or (
        key == "chat_template" and value.lower().endswith(".jinja"))
    return str(here.resolve()) if here.exists() or data_file else value


def validate_recipe(raw: dict[str, Any], source: Path | None = None, text: str | None = None,
                    overrides: list[str] | None = None) -> Recipe:
    """Validate a raw mapping; turn pydantic's errors into one readable RecipeError. An error on a key that an
    override (`--set`, or a flag that sets one) wrote names the override instead of a line of the file."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = list(dict.fromkeys(describe_error(err, source, text, overrides)
                                   for err in merged_union_errors(exc.errors())))
        where = f" in {source}" if source else ""
        raise RecipeError(f"Invalid recipe{where}:\n" + "\n".join(lines)) from None


UNION_BRANCH = re.compile(r"^(literal\[.*\]|constrained-\w+|function-[\w-]+(\[.*\])?|int|float|str|bool|none)$")


def merged_union_errors(errors: list[Any]) -> list[Any]:
    """Pydantic reports a value that fits no member of a union (`lr: fast` for `float | 'auto'`) once per member,
    each under a path ending in the member's name (`training.lr.constrained-float`, `training.lr.literal['auto']`).
    Users wrote `training.lr`: one error for it, saying what each member wanted."""
    merged: dict[tuple, Any] = {}
    for index, err in enumerate(errors):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and UNION_BRANCH.match(p)))
        if len(loc) == len(err["loc"]) or not err["msg"].startswith("Input should be "):
            merged[("#", index)] = {**err, "loc": loc}
            continue
        wanted = err["msg"].removeprefix("Input should be ").split(",")[0]
        if loc in merged:
            merged[loc]["msg"] += f" or {wanted}"
        else:
            merged[loc] = {**err, "loc": loc, "type": "union_member", "msg": f"should be {wanted}"}
    return list(merged.values())


def describe_error(err: Any, source: Path | None, text: str | None, overrides: list[str] | None = None) -> str:
    """One line per problem: key path, line number (or the override that set it), bad value, and a hint."""
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    key = ".".join(loc) or "(top level)"
    override = override_of(loc, overrides or [])
    line = find_yaml_line(text, loc) if text and not override else None
    at = f" (from the command line: {override})" if override else f" (line {line})" if line else ""
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(loc, tags={str(p) for p in err["loc"] if _is_union_tag(p)})
        return f"  - {key}{at}: unknown key.{hint}"
    if err["type"] == "missing":
        return f"  - {key}: required, but missing."
    value = err.get("input")
    if err["type"] == "union_tag_invalid":  # e.g. adapter.kind: lorra
        tag, expected = str(err["ctx"]["tag"]), re.findall(r"'([^']+)'", str(err["ctx"]["expected_tags"]))
        expected = [kind for kind in expected if kind not in REFUSED_KINDS]  # a tag only to say why it is refused
        close = [tag.lower()] if tag.lower() in expected else difflib.get_close_matches(tag, expected, n=1)
        guess = f" Did you mean {close[0]!r}? (kinds are lowercase)" if close and close[0] == tag.lower() else (
            f" Did you mean {close[0]!r}?" if close else "")
        return f"  - {key}.kind{at}: unknown kind {tag!r}.{guess} Choose from {', '.join(expected)}."
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a rule over a whole section: its keys are in the message, not its mapping
        return f"  - {key}{at}: {message}."
    return f"  - {key}{at}: {message} (got {value!r})."


def override_of(loc: list[str], overrides: list[str]) -> str | None:
    """The last override whose key is `loc` or a section above it (the one that wrote the value in question)."""
    for item in reversed(overrides):
        parts = item.partition("=")[0].strip().split(".")
        if loc[:len(parts)] == parts:
            return item
    return None


REFUSED_KINDS = ("loftq",)  # kinds the schema knows only to refuse with the reason (LoftqAdapter)


def _is_union_tag(part: Any) -> bool:
    """Pydantic puts the chosen variant's tag in an error's path; users never wrote it."""
    return part in UNION_TAGS


# Keys as transformers' TrainingArguments, TRL's configs, PEFT's LoraConfig or LLaMA-Factory/Axolotl name them, and
# the recipe key that says the same: what a user coming from those tools writes first.
OTHER_TOOLS_KEYS = {
    "learning_rate": "training.lr", "per_device_train_batch_size": "training.batch_size",
    "micro_batch_size": "training.batch_size", "gradient_accumulation_steps": "training.grad_accum",
    "num_train_epochs": "training.epochs", "num_epochs": "training.epochs",
    "lr_scheduler_type": "training.scheduler", "lr_scheduler": "training.scheduler",
    "gradient_checkpointing": "training.gradient_checkpointing", "save_total_limit": "training.keep_checkpoints",
    "lora_r": "adapter.r", "lora_rank": "adapter.r", "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout", "target_modules": "adapter.targets", "lora_target": "adapter.targets",
    "lora_target_modules": "adapter.targets", "finetuning_type": "adapter.kind", "peft_type": "adapter.kind",
    "max_seq_length": "data.max_length", "sequence_len": "data.max_length", "cutoff_len": "data.max_length",
    "model_name_or_path": "model.source", "base_model": "model.source", "torch_dtype": "model.dtype",
    "dataset": "data.train", "train_file": "data.train", "val_set_size": "data.eval_fraction", "rank": "adapter.r",
    "chat_template": "model.chat_template", "chat_template_path": "model.chat_template",
    "chat_template_jinja": "model.chat_template", "template": "model.chat_template",
}


def did_you_mean(loc: list[str], tags: set[str] | frozenset[str] = frozenset()) -> str:
    """Suggest the closest valid key for a misspelt one (in the union variant that `tags` names), or the recipe's
    name for a key as another tool spells it (`OTHER_TOOLS_KEYS`)."""
    if loc[-1] in OTHER_TOOLS_KEYS and OTHER_TOOLS_KEYS[loc[-1]] != ".".join(loc):
        return f" tunesmith calls it {OTHER_TOOLS_KEYS[loc[-1]]}."
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            annotation = _section_type(annotation, tags)
        if annotation is None:
            return ""
        model = annotation
    valid = [name for name in model.model_fields if name != "base_dir"]
    section = ".".join(loc[:-1])
    # the key as written somewhere else first (adapter.lr is training.lr, not a misspelt adapter.r)
    kinds = kinds_with_key(loc[:-1], loc[-1])
    this = next((tag for tag in sorted(tags) if tag not in kinds), None)  # the kind the recipe chose
    this_kind = f"of {section}.kind {this}" if this else "of this kind"
    if kinds:  # a key of another method or adapter kind (method.num_generations under method.kind: cpt)
        return (f" It is a key of {section}.kind {', '.join(kinds)}, not {this_kind}: remove it"
                f"{f' ({section}.kind {this} takes {listed_keys(valid)})' if this else ''}.")
    home = section_holding(loc[-1])
    if home is not None and home != section:
        return f" It is a key of {home}: {home}.{loc[-1]}."
    close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
    if close:
        return f" Did you mean {close[0]!r}?"
    for other in difflib.get_close_matches(loc[-1], union_keys(loc[:-1]), n=1, cutoff=0.75):
        kinds = kinds_with_key(loc[:-1], other)  # misspelt and of another kind: method.gama on dpo (simpo's gamma)
        return f" Did you mean {other!r}? It is a key of {section}.kind {', '.join(kinds)}, not {this_kind}."
    return f" Valid keys: {', '.join(valid)}."


def listed_keys(keys: list[str]) -> str:
    """A section's keys for a message, `kind` left out (it is what chose them)."""
    return ", ".join(key for key in keys if key != "kind") or "no other key"


def union_keys(section: list[str]) -> list[str]:
    """Every key some kind of a union section (method, adapter) has; [] for other sections."""
    if len(section) != 1 or section[0] not in Recipe.model_fields:
        return []
    members = [arg for arg in typing.get_args(Recipe.model_fields[section[0]].annotation)
               if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return sorted({key for member in members for key in member.model_fields if key != "kind"})


def kinds_with_key(section: list[str], key: str) -> list[str]:
    """The kinds of a union section (method, adapter) whose own keys include `key`, e.g. ['grpo'] for
    num_generations; [] for other sections."""
    if len(section) != 1 or section[0] not in Recipe.model_fields:
        return []
    annotation = Recipe.model_fields[section[0]].annotation  # pydantic keeps the union, its Annotated stripped
    members = [arg for arg in typing.get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return [kind for member in members if key in member.model_fields and "kind" in member.model_fields
            for kind in typing.get_args(member.model_fields["kind"].annotation)
            if kind not in REFUSED_KINDS]  # a kind only there to be refused takes nothing


def section_holding(key: str) -> str | None:
    """The top-level recipe section with a key named `key` (e.g. training for distributed), or None."""
    for name, field in Recipe.model_fields.items():
        annotation = field.annotation
        section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
            else _section_type(annotation)
        if section is not None and key in section.model_fields:
            return name
    return None


def _section_type(annotation: Any, tags: set[str] | frozenset[str] = frozenset()) -> type[BaseModel] | None:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            kind = arg.model_fields.get("kind")
            if not tags or kind is None or set(getattr(kind.annotation, "__args__", ())) & tags:
                return arg
            continue
        found = _section_type(arg, tags)
        if found:
            return found
    return None


def find_yaml_line(text: str, loc: list[str]) -> int | None:
    """Line number (1-based) of a key path in YAML text, or None when it is not in the file."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            return line
        match = next(((k, v) for k, v in node.value if k.value == part), None)
        if match is None:
            return line
        line = match[0].start_mark.line + 1
        node = match[1]
    return line


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe, with every default written out, as saved in a run directory; `defaulted_keys` at the
    end lists the keys left to the defaults, so that the file, loaded again (a resume, a retrain), chooses what
    the original recipe let tunesmith choose."""
    defaulted = unset_keys(recipe)
    settings = recipe.model_dump(mode="json", exclude={"defaulted_keys"})
    for key in defaulted:  # a default of None resolves from the rest (data.replay.null_space): null, to resolve again
        *path, name = key.split(".")
        section, node = recipe, settings
        for part in path:
            section, node = getattr(section, part), node[part]
        field = type(section).model_fields[name]
        if not field.is_required() and field.get_default(call_default_factory=True) is None:
            node[name] = None
    keys = yaml.safe_dump({"defaulted_keys": defaulted}, sort_keys=False, default_flow_style=None, width=120)
    settings = yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)
    return (f"{settings}# The keys above that the recipe left to tunesmith's defaults: while one holds its default "
            f"value, tunesmith\n# chooses for it as it did for this run (an edited value counts as given).\n{keys}")


def unset_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """The dotted keys of `model` (a recipe or a section of one) that were not given, sections included, and those
    inside sections, given or not."""
    keys = []
    for name in type(model).model_fields:
        if name in ("base_dir", "defaulted_keys"):
            continue
        if name not in model.model_fields_set:
            keys.append(prefix + name)
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys.extend(unset_keys(value, f"{prefix}{name}."))
    return keys


def plain(value: Any) -> Any:
    """A value as the recipe file holds it (sections as mappings), for comparing with a default."""
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def flat_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe dump as {"training.lr": 0.0002, ...}; lists stay whole values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flat_keys(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def recipe_differences(before: Recipe, after: Recipe) -> dict[str, tuple[Any, Any]]:
    """The keys whose values differ between two recipes, with both values (`base_dir`, where the recipe file
    lay, is not a setting)."""
    old, new = (flat_keys(r.model_dump(mode="json", exclude={"base_dir", "defaulted_keys"})) for r in (before, after))
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)}
