"""A LoRA layer's update added into the frozen linear's output in one autograd step (train/fused_lora.py): the same
outputs and gradients as PEFT's lora.Linear, PEFT's own forward wherever the fused step does not cover a case, and
training with it reaches PEFT's adapter."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import load_recipe
from tunesmith.runs import create_run
from tunesmith.train.frozen_matmuls import cast_frozen_linears
from tunesmith.train.fused_lora import FusedLoraLinear, fuse_lora_linears

from .conftest import lora_tiny, make_tiny_project


def logits_and_grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


IDS = torch.randint(3, 200, (3, 20), generator=torch.Generator().manual_seed(1))


def test_the_fused_layers_give_peft_outputs_and_gradients(tiny_model_dir):
    model = lora_tiny(tiny_model_dir)
    logits, grads = logits_and_grads(model, IDS)
    fused_model = copy.deepcopy(model)
    fused = fuse_lora_linears(fused_model)
    assert fused.count == 7 * model.config.num_hidden_layers
    fused_logits, fused_grads = logits_and_grads(fused_model, IDS)
    assert fused_grads.keys() == grads.keys()
    assert relative(fused_logits, logits) < 1e-6
    for name, grad in grads.items():  # the lowest layers' A get theirs through every input gradient above
        assert relative(fused_grads[name], grad) < 1e-5, name
    fused.restore()
    assert not any(isinstance(m, FusedLoraLinear) for m in fused_model.modules())
    assert fused_model.state_dict().keys() == model.state_dict().keys()


def test_over_frozen_bf16_linears_the_fused_step_stays_as_near_fp32_as_peft(tiny_model_dir):
    model = lora_tiny(tiny_model_dir)
    _, grads = logits_and_grads(model, IDS)
    peft_half = copy.deepcopy(model)
    cast_frozen_linears(peft_half)
    _, peft_grads = logits_and_grads(peft_half, IDS)
    fused_half = copy.deepcopy(peft_half)
    fuse_lora_linears(fused_half)
    _, fused_grads = logits_and_grads(fused_half, IDS)
    # the two round the same products to bf16; only the order of fp32 sums differs
    assert relative(flat(fused_grads), flat(peft_grads)) < 1e-3
    assert relative(flat(fused_grads), flat(grads)) < 1.5 * relative(flat(peft_grads), flat(grads)) + 1e-4


class NotFused:
    """Stands in for LoraLinearFunction where the fused step must not run."""

    @staticmethod
    def apply(*args):
        raise AssertionError("the fused step ran")


@pytest.mark.parametrize("config", [{"lora_dropout": 0.1}, {"use_dora": True}])
def test_layers_the_fused_step_does_not_cover_run_peft_forward(tiny_model_dir, monkeypatch, config):
    from tunesmith.train import fused_lora

    model = lora_tiny(tiny_model_dir, **config).eval()  # eval: dropout is a no-op, yet still a Dropout module
    fused_model = copy.deepcopy(model)
    assert fuse_lora_linears(fused_model).count
    monkeypatch.setattr(fused_lora, "LoraLinearFunction", NotFused)
    with torch.no_grad():
        assert torch.equal(fused_model(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_disabled_adapters_and_autocast_run_peft_forward(tiny_model_dir):
    model = lora_tiny(tiny_model_dir)
    fused_model = copy.deepcopy(model)
    fuse_lora_linears(fused_model)
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=IDS).logits
        with fused_model.disable_adapter():
            assert torch.equal(fused_model(input_ids=IDS).logits, base)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = model(input_ids=IDS).logits
            assert torch.equal(fused_model(input_ids=IDS).logits, expected)


def test_forward_pre_hooks_on_the_lora_layers_still_see_their_input(tiny_model_dir):
    model = lora_tiny(tiny_model_dir)
    fuse_lora_linears(model)
    seen = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, FusedLoraLinear)}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].shape
        return hook

    for name, layer in layers.items():  # as the null space's moments read them (train/null_space.py)
        layer.register_forward_pre_hook(record(name))
    with torch.no_grad():
        model(input_ids=IDS)
    assert seen.keys() == layers.keys()
    assert all(shape[:2] == IDS.shape for shape in seen.values())


def test_training_with_the_fused_layers_reaches_peft_adapter(tmp_path, tiny_model_dir):
    from tunesmith.train import run_training

    saved = {}
    for fused in (True, False):
        root = tmp_path / str(fused)
        recipe = load_recipe(make_tiny_project(root, tiny_model_dir, train_rows=16, eval_rows=4),
                             ["training.max_steps=3", "training.precision=fp32", "data.replay.ratio=0",
                              f"training.fused_lora={str(fused).lower()}"])
        run = create_run(recipe, root / "runs")
        run_training(recipe, run)
        chosen = json.loads((run.path / "train.json").read_text())["chosen"]
        assert ("lora_forward" in chosen) is fused
        saved[fused] = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert saved[True].keys() == saved[False].keys()
    moved = [relative(saved[True][k], saved[False][k]) for k in saved[False]]
    assert max(moved) < 1e-4, max(moved)
