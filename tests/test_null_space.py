"""Issue 19: data.replay.null_space keeps each LoRA A off the directions the replay rows' inputs use."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_tiny_project
from tunesmith.config import DEFAULT_NULL_SPACE, Recipe, load_recipe
from tunesmith.runs import create_run
from tunesmith.train import run_training
from tunesmith.train.null_space import build_null_space, input_moments, lora_layers, principal_basis


def test_principal_basis_holds_the_asked_energy_and_stores_the_smaller_side():
    moment = torch.diag(torch.tensor([9.0, 0.5, 0.3, 0.2]))  # trace 10: the first axis holds 90%
    basis, inside, k = principal_basis(moment, 0.9)
    assert (k, inside) == (1, True) and torch.allclose(basis.abs().squeeze(), torch.tensor([1.0, 0, 0, 0]))
    basis, inside, k = principal_basis(moment, 0.97)  # 9 + 0.5 + 0.3 = 98%: three axes, so the complement is kept
    assert (k, inside) == (3, False) and torch.allclose(basis.abs().squeeze(), torch.tensor([0, 0, 0, 1.0]))


def test_it_is_on_by_default_for_lora_sft_only_and_refused_where_it_cannot_work():
    data = {"train": "t.jsonl"}
    assert Recipe(data=data).data.replay.null_space == DEFAULT_NULL_SPACE  # SFT, LoRA, the KL anchor
    assert "null_space" not in Recipe(data=data).data.replay.model_fields_set  # the chosen table says "default"
    assert "null_space" in Recipe(data={**data, "replay": {"null_space": 0.9}}).data.replay.model_fields_set
    assert Recipe(data=data, adapter={"kind": "qlora"}).data.replay.null_space == DEFAULT_NULL_SPACE
    for off in [{"method": {"kind": "dpo"}}, {"adapter": {"kind": "ia3"}}, {"adapter": {"kind": "full"}},
                {"training": {"distributed": "fsdp"}}, {"data": {**data, "replay": {"ratio": 0}}},
                {"data": {**data, "replay": {"loss": "sft"}}}]:
        assert Recipe(**{"data": data, **off}).data.replay.null_space == 0, off
    assert Recipe(data={**data, "replay": {"null_space": 0}}).data.replay.null_space == 0
    assert Recipe(data={**data, "replay": {"null_space": 0.9}}, adapter={"kind": "dora"}).data.replay.null_space == 0.9
    assert Recipe(data={**data, "replay": {"null_space": 0.5}}, method={"kind": "dpo"}).data.replay.null_space == 0.5
    with pytest.raises(ValueError, match=r"data\.replay\.null_space .* adapter\.kind=ia3 has none"):
        Recipe(data={**data, "replay": {"null_space": 0.9}}, adapter={"kind": "ia3"})
    with pytest.raises(ValueError, match=r"data\.replay\.null_space reads the replay rows"):
        Recipe(data={**data, "replay": {"null_space": 0.9, "ratio": 0}})
    with pytest.raises(ValueError, match=r"training\.distributed=deepspeed-zero3 shards"):
        Recipe(data={**data, "replay": {"null_space": 0.9}}, training={"distributed": "deepspeed-zero3"})


def lora_on_tiny(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for module in lora_layers(peft_model).values():  # a trained B, so that the adapter changes the outputs
        torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
    return peft_model.eval()


def adapter_effect(peft_model, rows):
    """Mean absolute change of the logits that the adapter makes on `rows` (token id lists of one length)."""
    ids = torch.tensor(rows)
    with torch.no_grad():
        tuned = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
    return float((tuned - base).abs().mean())


def test_projected_adapters_leave_the_general_rows_alone(tiny_model_dir):
    peft_model = lora_on_tiny(tiny_model_dir)
    vocab = peft_model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    # 16 general tokens span at most 16 of the 64 hidden dimensions at each layer; other rows reach the rest
    general = torch.randint(3, vocab, (2, 8), generator=generator).tolist()
    other = torch.randint(3, vocab, (24, 12), generator=generator).tolist()
    before = {"general": adapter_effect(peft_model, general), "other": adapter_effect(peft_model, other)}
    space = build_null_space(peft_model, [{"input_ids": r} for r in general], pad_id=0, energy=0.9999)
    after = {"general": adapter_effect(peft_model, general), "other": adapter_effect(peft_model, other)}
    assert after["general"] < 0.01 * before["general"]
    assert after["other"] > 0.3 * before["other"]  # what the general rows never showed stays open
    layers = lora_layers(peft_model)
    assert space.report["layers"] == len(layers) and space.report["moments"] < len(layers)  # q, k, v share one
    assert space.report["tokens"] == 16 and space.report["closed_share_max"] <= 16 / 64


def test_padding_is_not_read_into_the_moments(tiny_model_dir):
    peft_model = lora_on_tiny(tiny_model_dir)
    layers = lora_layers(peft_model)
    rows = [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}]
    moments, _, tokens = input_moments(peft_model, layers, rows, pad_id=0)
    alone = [input_moments(peft_model, layers, [row], pad_id=0)[0] for row in rows]
    assert tokens == 6
    for name, moment in moments.items():
        assert torch.allclose(moment, alone[0][name] + alone[1][name], atol=1e-3, rtol=1e-4)


def test_training_keeps_every_a_off_the_general_directions_and_says_so(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    replay_file = tmp_path / "general.jsonl"
    replay_file.write_text("".join(json.dumps({"prompt": f"Say {i} twice.", "answer": f"{i} {i}"}) + "\n"
                                   for i in range(8)), encoding="utf-8")
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         [f"data.replay.source={replay_file}", "data.replay.ratio=0.5", "data.replay.null_space=0.99",
                          "training.max_steps=4", "training.lr=0.01"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    assert report["replay"]["null_space"]["energy"] == 0.99 and report["replay"]["null_space"]["rows"] == 8
    # the pass that read the moments kept the base's log-probabilities: training itself ran no base pass
    kept = report["replay"]["base_reference"]
    assert report["replay"]["null_space"]["base_rows_kept"] == kept["rows_kept"] == 8
    per_draw = report["replay"]["rows_per_step"] // recipe.training.grad_accum
    assert kept["base_passes"] == -(-8 // per_draw) and kept["batches_from_cache"] >= 4 * recipe.training.grad_accum
    assert report["chosen"]["null_space"]["value"] == "99%"
    # the saved adapter: every A is orthogonal to the general rows' principal directions, as measured afresh
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(model, str(run.adapter_dir))
    layers = lora_layers(tuned)
    from tunesmith.data.template import encode_split

    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (run.path / "data" / "replay.jsonl").read_text().splitlines()]
    examples = [{"input_ids": e.input_ids} for e in encode_split(tokenizer, rows, 128).examples]
    moments, group, _ = input_moments(tuned, layers, examples, tokenizer.pad_token_id)
    moved = 0.0
    for name, module in layers.items():
        basis, inside, _ = principal_basis(moments[group[name]], 0.99)
        a = module.lora_A["default"].weight.detach()
        along = a @ basis if inside else a - (a @ basis) @ basis.T
        moved = max(moved, float(along.norm() / a.norm()))
    assert moved < 1e-3


def test_the_plan_counts_the_bases_training_keeps_and_the_skip_it_will_make(tiny_model_dir, tmp_path):
    """plan/workload.py's sharing map names as many distinct inputs as the trainer finds, and its bound holds."""
    from tunesmith.plan import build_report
    from tunesmith.plan.architecture import read_architecture
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths, trained_weights

    recipe = Recipe(model={"source": str(tiny_model_dir)}, data={"train": "t.jsonl"},
                    adapter={"kind": "lora", "r": 4, "alpha": 8, "targets": "all-linear"}, base_dir=str(tmp_path))
    arch = read_architecture(tiny_model_dir)
    weights = trained_weights(recipe, arch, 2.0**40)
    peft_model = lora_on_tiny(tiny_model_dir)
    vocab = peft_model.config.vocab_size
    rows = torch.randint(3, vocab, (6, 10), generator=torch.Generator().manual_seed(2)).tolist()
    space = build_null_space(peft_model, [{"input_ids": r} for r in rows], pad_id=0, energy=DEFAULT_NULL_SPACE)
    kept = sum({id(layer.basis): layer.basis.numel() * 4 for layer in space.layers}.values())
    assert len(weights.null_space_inputs) == space.report["moments"]

    def bases(memory: float, null_space: float | None = None) -> dict | None:
        copy = recipe if null_space is None else Recipe(**{**recipe.model_dump(), "data": {
            "train": "t.jsonl", "replay": {"null_space": null_space}}})
        report = build_report(copy, arch, Device("cpu", "cpu", memory, 1e11, False), RowLengths(64, "t", 100))
        return {c.name: c for c in report.components}.get("null-space bases")

    planned = bases(2.0**40)
    assert 0 < kept <= planned.bytes
    assert bases(2.0**40, 0) is None
    weights_bytes = arch.parameters * 4
    assert bases(weights_bytes + 1024).bytes == 0 and "skipped" in bases(weights_bytes + 1024).how


def test_the_moments_pass_keeps_the_base_reference_a_training_draw_would_compute(tiny_model_dir):
    """keep_null_space reads the moments from the anchor's own base passes over the first pass's batches: the kept
    log-probabilities are the ones training's first draws compute (to the bit), and the moments those of the
    padded reading (to float rounding), packed rows included."""
    from types import SimpleNamespace

    from tunesmith.train.replay import BaseReference, ReplayBatches, keep_null_space, packed_replay

    peft_model = lora_on_tiny(tiny_model_dir)
    vocab = peft_model.config.vocab_size
    generator = torch.Generator().manual_seed(4)
    examples = [{"input_ids": torch.randint(3, vocab, (n,), generator=generator).tolist(), "labels": [-100] * n}
                for n in (5, 23, 9, 14, 30, 7, 11)]
    replay = ReplayBatches(examples, 3, pad_id=0, seed=5)
    assert any(packed_replay(peft_model, replay.batch(rows, "cpu")) for rows in replay.first_pass_batches())
    callbacks = []
    trainer = SimpleNamespace(model=peft_model, accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                              add_callback=callbacks.append)
    shared = BaseReference()
    report = keep_null_space(trainer, replay, shared, 0.95)
    assert report["base_rows_kept"] == len(examples) and shared.base_passes == 3 and len(callbacks) == 1
    # training's own first draws, without the shared pass: the same values to the bit
    fresh = BaseReference()
    for draw in range(3):
        rows = replay.rows(draw)[: len(replay.first_pass_batches()[draw])]
        assert torch.equal(fresh.log_probs(replay, rows, peft_model, peft_model, "cpu")[1],
                           torch.cat([shared.kept[i] for i in rows]))
    assert report["tokens"] == sum(len(e["input_ids"]) for e in examples)
    padded = build_null_space(lora_on_tiny(tiny_model_dir), examples, pad_id=0, energy=0.95)
    assert report["moments"] == padded.report["moments"]
    for module, layer in zip(lora_layers(peft_model).values(), padded.layers, strict=True):  # A projected alike
        assert torch.allclose(module.lora_A["default"].weight, layer.weights[0], atol=1e-4)
