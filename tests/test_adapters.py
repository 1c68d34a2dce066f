"""Adapter kinds on a tiny llama (2 blocks), each trained through the real `run_train` path.

For every kind: the loss falls, exactly the intended weights change (all others stay bit-identical),
and the saved artifact reloads to the logits the model had at the end of training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

import tunesmith.train.common as common
import tunesmith.train.sft as sft
from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe, validate_recipe
from tunesmith.errors import RecipeError, TunesmithError
from tunesmith.models import load_model
from tunesmith.runs import Run, create_run
from tunesmith.train.adapters import (
    adapter_setup,
    describe_blocks,
    keep_4bit_layers_differentiable,
    model_load_kwargs,
    trainable_summary,
    trained_model_dir,
)

STEPS = 12
IDS = torch.tensor([[1, 5, 9, 14, 30, 2, 7, 11]])
# kind -> (adapter section, learning rate). LoRA-family kinds put adapters on the last block only, so the
# bit-identity check also pins `layers: last-half`.
KINDS: dict[str, tuple[dict[str, Any], float]] = {
    "lora": ({"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "targets": "qkvo", "layers": "last-half"}, 3e-2),
    "dora": ({"kind": "dora", "r": 4, "alpha": 8, "dropout": 0.0, "layers": "last-half"}, 3e-2),
    "rslora": ({"kind": "rslora", "r": 4, "alpha": 8, "dropout": 0.0, "layers": "last-half"}, 3e-2),
    "pissa": ({"kind": "pissa", "r": 4, "alpha": 4, "dropout": 0.0, "layers": "last-half"}, 1e-2),
    "olora": ({"kind": "olora", "r": 4, "alpha": 4, "dropout": 0.0, "layers": "last-half"}, 1e-2),
    "qlora": ({"kind": "qlora", "r": 4, "alpha": 8, "dropout": 0.0, "layers": "last-half"}, 3e-2),
    "adalora": ({"kind": "adalora", "init_r": 6, "target_r": 4, "dropout": 0.0, "layers": "last-half",
                 "tinit": 2, "tfinal": 2}, 3e-2),
    "ia3": ({"kind": "ia3"}, 1e-1),
    "prompt_tuning": ({"kind": "prompt_tuning", "virtual_tokens": 4}, 1e-1),
    # free prefix vectors on a random tiny model learn slowly at small rates; large ones are stable here
    "prefix_tuning": ({"kind": "prefix_tuning", "virtual_tokens": 4}, 1.0),
    "p_tuning": ({"kind": "p_tuning", "virtual_tokens": 4, "encoder_hidden_size": 32}, 3e-2),
    "full": ({"kind": "full"}, 3e-3),
    "partial": ({"kind": "partial", "last_blocks": 1, "train_norm": True}, 3e-3),
    "hft": ({"kind": "hft", "round_steps": STEPS // 2}, 3e-3),
}
# Which state-dict keys training may change, per kind (everything else must stay bit-identical).
ADAPTER_WEIGHTS = ("lora_", "ia3_", "prompt_encoder")
MAY_CHANGE = {
    "partial": lambda key: ".layers.1." in key or key.endswith("model.norm.weight"),
    "hft": lambda key: ".layers." in key,
}


def may_change(kind: str, key: str) -> bool:
    if kind in MAY_CHANGE:
        return MAY_CHANGE[kind](key)
    if kind == "full":
        return True
    return any(part in key for part in ADAPTER_WEIGHTS)


@dataclass
class Snapshot(TrainerCallback):
    """Weights at train begin, at every `every`-th step and at the end, and the trained model itself."""

    every: int = STEPS
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    model: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.model = model
        self.states[0] = _weights(model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self.states[state.global_step] = _weights(model)


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@dataclass
class Trained:
    kind: str
    run: Run
    artifact: Path
    snapshot: Snapshot
    recipe: Any

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.run.read_metrics() if "loss" in r]

    def changed(self, start: int = 0, end: int = STEPS) -> set[str]:
        before, after = self.snapshot.states[start], self.snapshot.states[end]
        return {key for key in after if not torch.equal(before[key], after[key])}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("adapters"), tiny_model_dir, train_rows=32, eval_rows=4)


def tiny_recipe(project: Path, adapter: dict[str, Any], lr: float = 3e-2, steps: int = STEPS):
    overrides = [f"adapter={json.dumps(adapter)}", f"training.max_steps={steps}", f"training.lr={lr}",
                 "training.logging_steps=2", "training.save_steps=1000", "eval.max_examples=4",
                 "eval.max_new_tokens=4", "export.formats=[adapter]"]
    return load_recipe(project, overrides)


@pytest.fixture(scope="module")
def trained(project: Path):
    """Train each kind once (on first use) through `run_train`, recording weights with a Snapshot callback."""
    cache: dict[str, Trained] = {}

    def train(kind: str) -> Trained:
        if kind not in cache:
            adapter, lr = KINDS[kind]
            recipe = tiny_recipe(project, adapter, lr)
            snapshot = Snapshot(every=adapter.get("round_steps", STEPS))
            real = common.adapter_callbacks
            common.adapter_callbacks = lambda a, r: [*real(a, r), snapshot]
            try:
                run = create_run(recipe, project.parent / "runs")
                artifact = sft.run_train(recipe, run)
            finally:
                common.adapter_callbacks = real
            cache[kind] = Trained(kind, run, artifact, snapshot, recipe)
        return cache[kind]

    return train


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_trains_only_its_weights_and_reloads(trained, tiny_model_dir: Path, kind: str) -> None:
    result = trained(kind)
    losses = result.losses()
    assert sum(losses[-2:]) / 2 < 0.95 * sum(losses[:2]) / 2, losses

    changed = result.changed()
    assert changed, "nothing trained"
    assert {key for key in changed if not may_change(kind, key)} == set()
    if kind in ("lora", "dora", "rslora", "pissa", "olora", "qlora", "adalora"):
        assert all(".layers.1." in key for key in changed), "LoRA outside the last half"

    trained_logits = _logits(result.snapshot.model)
    assert torch.allclose(_logits(reload(result, tiny_model_dir)), trained_logits, atol=_tolerance(kind))


def _logits(model: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits[:, -IDS.shape[1]:].float()


def _tolerance(kind: str) -> float:
    # QLoRA trains its adapter in bf16 (TRL 1.16 casts it) and reloads it in fp32.
    return 5e-2 if kind == "qlora" else 1e-4


def reload(result: Trained, base_dir: Path) -> Any:
    """What eval/export load: model/ for whole-model kinds, else the base + the saved PEFT adapter."""
    from peft import PeftModel

    if result.artifact == trained_model_dir(result.run):
        return load_model(result.artifact)
    base = load_model(base_dir, **model_load_kwargs(result.recipe.adapter))
    # a 4-bit base computes as in training (bitsandbytes' repacked CPU kernel rounds through bf16: ~0.1 apart)
    return PeftModel.from_pretrained(keep_4bit_layers_differentiable(base), result.artifact)


def test_whole_model_kinds_save_a_model_directory(trained) -> None:
    for kind in ("full", "partial", "hft"):
        result = trained(kind)
        assert result.artifact == result.run.path / "model"
        assert (result.artifact / "model.safetensors").is_file() and (result.artifact / "tokenizer.json").is_file()
        assert not result.run.adapter_dir.exists()


def test_partial_changes_exactly_the_last_block_and_norm(trained) -> None:
    changed = trained("partial").changed()
    assert any(".layers.1." in key for key in changed) and "model.norm.weight" in changed
    assert not any(".layers.0." in key or "embed_tokens" in key or "lm_head" in key for key in changed)


def test_hft_trains_one_half_per_round(trained) -> None:
    result = trained("hft")
    half = STEPS // 2
    first, second = result.changed(0, half), result.changed(half, STEPS)
    assert first and all(".layers.0." in key for key in first)
    assert second and all(".layers.1." in key for key in second)
    block_weights = {key for key in result.snapshot.states[0] if ".layers." in key}
    assert {k for k in block_weights if ".layers.0." in k} <= first  # every weight of the round's half moved
    assert {k for k in block_weights if ".layers.1." in k} <= second


def test_pissa_and_olora_save_a_plain_lora_for_the_untouched_base(trained) -> None:
    for kind in ("pissa", "olora"):
        config = json.loads((trained(kind).artifact / "adapter_config.json").read_text())
        assert config["init_lora_weights"] is True and config["r"] == 8  # converted: rank 2r


def test_adalora_total_step_comes_from_the_training_plan(trained) -> None:
    config = json.loads((trained("adalora").artifact / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["total_step"] == STEPS


def test_trainable_summary_names_modules_and_blocks(trained) -> None:
    report = json.loads((trained("lora").run.path / "train.json").read_text())["trainable"]
    assert "q_proj.lora_A (layer 1)" in report["modules"]
    assert 0 < report["percent"] < 10 and report["trainable"] < report["total"]


def test_eval_and_export_work_for_whole_model_and_prompt_kinds(trained, tiny_model_dir: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from tunesmith.eval import run_eval
    from tunesmith.export import run_export
    from tunesmith.export.merged import export_merged

    full = trained("full")
    results = json.loads(run_eval(full.recipe, full.run).read_text())
    assert results["tuned"]["loss"] < results["base"]["loss"]
    run_export(full.recipe, full.run, ["adapter", "merged"])
    manifest = json.loads((full.run.exports_dir / "manifest.json").read_text())
    assert "skipped" in manifest["adapter"] and (full.run.exports_dir / "merged" / "model.safetensors").is_file()
    # said on stderr, not only written in the manifest
    assert "export: adapter skipped: this run trained the whole model" in capsys.readouterr().err
    weights = (full.run.exports_dir / "merged" / "model.safetensors").stat()
    assert weights.st_ino == (full.run.path / "model" / "model.safetensors").stat().st_ino  # linked, not copied

    prompt = trained("prompt_tuning")
    results = json.loads(run_eval(prompt.recipe, prompt.run).read_text())
    assert results["tuned"]["loss"] < results["base"]["loss"]
    with pytest.raises(TunesmithError, match="cannot be merged") as merging:
        export_merged(tiny_model_dir, prompt.run.adapter_dir, prompt.run.exports_dir / "merged")
    from tunesmith.export.gguf_lora import NotAGgufLora, lora_settings

    with pytest.raises(TunesmithError, match="its virtual tokens go into no GGUF file") as gguf:
        lora_settings(prompt.run.adapter_dir)  # not NotAGgufLora, on which serve would try the merged GGUF instead
    assert not isinstance(gguf.value, NotAGgufLora)
    for refusal in (merging.value, gguf.value):  # each hint leads somewhere that works, not to another refusal
        assert "`tunesmith chat RUN`" in refusal.hint and "train adapter.kind lora" in refusal.hint

    pissa = trained("pissa")
    _, max_diff = export_merged(tiny_model_dir, pissa.run.adapter_dir, pissa.run.exports_dir / "merged")
    assert max_diff < 1e-4


@pytest.mark.parametrize(("layers", "blocks"), [("last-half", {1}), ("first-half", {0}), ([1], {1}), ("all", {0, 1})])
def test_layers_place_lora_on_the_chosen_blocks(tiny_model_dir: Path, layers: Any, blocks: set[int]) -> None:
    from peft import get_peft_model

    recipe = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "lora", "layers": layers}})
    model, config = adapter_setup(load_model(tiny_model_dir), recipe.adapter)
    names = [name for name, _ in get_peft_model(model, config).named_parameters() if "lora_A" in name]
    assert {int(name.split(".layers.")[1].split(".")[0]) for name in names} == blocks
    assert {name.split(".")[-4] for name in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"}


def test_describe_blocks_compresses_ranges() -> None:
    assert describe_blocks([4]) == "layer 4"
    assert describe_blocks([0, 1, 2, 5]) == "layers 0–2, 5"


def test_trainable_summary_of_a_partial_model(tiny_model_dir: Path) -> None:
    recipe = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "partial", "last_blocks": 1}})
    model, config = adapter_setup(load_model(tiny_model_dir), recipe.adapter)
    summary = trainable_summary(model)
    assert config is None
    assert "self_attn.q_proj (layer 1)" in summary["modules"] and "model.norm" in summary["modules"]
    assert not any("embed_tokens" in m for m in summary["modules"])


def recipe_error(adapter: dict[str, Any], **training: Any) -> str:
    with pytest.raises(RecipeError) as caught:
        validate_recipe({"data": {"train": "x"}, "adapter": adapter, "training": training})
    return str(caught.value)


def test_refused_kinds_say_why() -> None:
    assert "LoftQ rewrites the base weights" in recipe_error({"kind": "loftq"})
    message = recipe_error({"kind": "prefix_tuning"}, gradient_checkpointing=True)
    assert "gradient_checkpointing" in message and "prompt_tuning" in message
    assert "at least one block" in recipe_error({"kind": "lora", "layers": []})


def test_impossible_placements_fail_before_training(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    too_deep = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "lora", "layers": [5]}})
    with pytest.raises(RecipeError, match=r"block\(s\) \[5\] do not exist"):
        adapter_setup(model, too_deep.adapter)
    too_many = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "partial", "last_blocks": 3}})
    with pytest.raises(RecipeError, match="has 2 blocks"):
        adapter_setup(model, too_many.adapter)


def test_qlora_without_bitsandbytes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesmith.train.adapters as adapters

    monkeypatch.setattr(adapters.importlib.util, "find_spec", lambda name: None)
    recipe = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "qlora"}})
    with pytest.raises(TunesmithError, match=r"qlora needs bitsandbytes") as caught:
        model_load_kwargs(recipe.adapter)
    assert "tunesmith[qlora]" in str(caught.value)


def test_qlora_8bit_loads_quantized(tiny_model_dir: Path) -> None:
    recipe = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "qlora", "bits": 8}})
    model = load_model(tiny_model_dir, **model_load_kwargs(recipe.adapter))
    assert model.is_loaded_in_8bit
    _, config = adapter_setup(model, recipe.adapter)
    assert config.r == 16


def test_qlora_gradients_survive_an_inference_pass_before_training(tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """bitsandbytes repacks a 4-bit layer for a CPU kernel without a backward the first time it runs in eval mode
    without gradients (as the replay answers are generated before training); the gradients that reach the first
    block's LoRA must be the same after such a pass as without it (they fell ~1000x on SmolLM2-135M before). The
    layers are told the CPU has AVX512-BF16, so the repacking is asked for on every machine."""
    import bitsandbytes.nn.modules as bnb_modules
    from peft import get_peft_model

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)

    def first_block_gradient(inference_first: bool) -> torch.Tensor:
        recipe = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "qlora", "r": 4, "alpha": 8}})
        model, config = adapter_setup(load_model(tiny_model_dir, **model_load_kwargs(recipe.adapter)), recipe.adapter)
        torch.manual_seed(0)
        config.init_lora_weights = False  # B not zero: gradients reach A
        model = get_peft_model(model, config)
        assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
        if inference_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=IDS)
            model.train()
        model(input_ids=IDS, labels=IDS).loss.backward()
        return next(p.grad for name, p in model.named_parameters() if ".layers.0." in name and "lora_A" in name)

    fresh, after = first_block_gradient(False), first_block_gradient(True)
    assert fresh.norm() > 0 and torch.allclose(after, fresh, rtol=1e-3, atol=1e-6)


def test_qlora_on_cpu_with_an_old_bitsandbytes_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesmith.train.adapters as adapters

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(adapters.metadata, "version", lambda name: "0.45.5")
    recipe = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "qlora"}})
    with pytest.raises(TunesmithError, match=r"qlora needs a CUDA GPU or bitsandbytes' CPU backend"):
        model_load_kwargs(recipe.adapter)


def test_misspelt_key_is_matched_against_the_chosen_kind() -> None:
    assert "Did you mean 'last_blocks'?" in recipe_error({"kind": "partial", "last_block": 1})
    assert "Did you mean 'round_steps'?" in recipe_error({"kind": "hft", "round_step": 3})


def test_adalora_target_rank_above_its_start_is_refused_before_training() -> None:
    """AdaLoRA prunes from init_r down to target_r; the other way round PEFT failed at step 2 (kthvalue: k out of
    range)."""
    message = recipe_error({"kind": "adalora", "init_r": 4, "target_r": 8})
    assert "target_r (8) is above init_r (4)" in message and "init_r: 12" in message
    assert validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "adalora", "init_r": 8, "target_r": 8}})


def test_hft_says_what_a_round_trains_and_warns_when_the_halves_never_swap(tmp_path: Path, tiny_model_dir: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Rounds of 5 steps in a 2-step run: block 1 never trains, said before the first step, and the trainable table
    (all blocks: the optimizer holds them all) is followed by what the first round trains."""
    from tunesmith.train import run_training

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2),
                         ["adapter.kind=hft", "adapter.round_steps=5", "training.max_steps=2", "training.lr=1e-4"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    said = " ".join(capsys.readouterr().err.split())
    assert "adapter.round_steps is 5 and the run takes 2 optimizer steps" in said
    assert "the odd-numbered blocks never train" in said and "Set adapter.round_steps to 1 (2 rounds)" in said
    first_round = int(said.split("hft: the blocks train in alternating halves")[1].split(" parameters")[0]
                      .rsplit(" ", 1)[1].replace(",", ""))
    summary = json.loads((run.path / "train.json").read_text())["trainable"]
    assert summary["first_round"] == first_round and 0 < first_round < summary["trainable"]


def test_ia3_is_used_unfolded_so_the_base_scored_after_it_is_the_base(tiny_model_dir: Path) -> None:
    """Folding (IA)3 into the weights and back divides by its scales again ("Unmerge result can be inaccurate"):
    eval scores the tuned model, then the base, on one model; the base must come back bit for bit."""
    import warnings

    from peft import IA3Config, get_peft_model

    from tunesmith.models.tuned import adapter_active

    model = get_peft_model(load_model(tiny_model_dir), IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                                 feedforward_modules=["down_proj"])).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "ia3_l" in name:
                weight.copy_(torch.linspace(1e-4, 3.0, weight.numel()).reshape(weight.shape))
        with model.disable_adapter():
            before = model(input_ids=IDS).logits
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PEFT's unmerge warning would fail here
            with adapter_active(model):
                tuned = model(input_ids=IDS).logits
        with model.disable_adapter():
            after = model(input_ids=IDS).logits
    assert torch.equal(before, after) and not torch.allclose(tuned, before)


def test_only_peft_s_false_alarm_on_adalora_rank_patterns_is_hidden() -> None:
    import warnings

    from tunesmith.cli.app import _hide_library_notices

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _hide_library_notices()
        prefix = "The following rank_pattern keys did not match any targeted module or parameter and were ignored: "
        warnings.warn(prefix + "['model.layers.0.mlp.down_proj.lora_E'].", RuntimeWarning, stacklevel=1)
        warnings.warn(prefix + "['model.layers.0.mlp.down_proj.lora_E', 'model.layers.1.mlp.up_proj.lora_E'].",
                      RuntimeWarning, stacklevel=1)
        real = prefix + "['model.layers.0.mlp.down_proj.lora_E', 'model.layers.0.mlp.down_proj']."
        warnings.warn(real, RuntimeWarning, stacklevel=1)  # one key that is not a lora_E: shown
    assert [str(w.message) for w in caught] == [real]


def test_a_qlora_run_says_eval_and_merge_use_the_unquantized_base(trained, capsys: pytest.CaptureFixture) -> None:
    from tunesmith.export import run_export
    from tunesmith.models.tuned import tuned_variants

    qlora = trained("qlora")
    capsys.readouterr()
    tuned_variants(qlora.run, "cpu", with_base=True)
    run_export(qlora.recipe, qlora.run, ["merged"])
    said = " ".join(capsys.readouterr().err.split())
    assert "qlora: scoring the adapter on the base's full fp32 weights" in said
    assert "qlora: merging the adapter on the base's full fp32 weights" in said
    capsys.readouterr()
    tuned_variants(trained("lora").run, "cpu", with_base=True)
    assert "qlora:" not in capsys.readouterr().err
