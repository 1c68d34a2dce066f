"""The frozen base's linear layers in bf16 on a CPU with fast bf16 (train/frozen_matmuls.py): the adapter, the LM
head and the gradients' dtype stay fp32, the step's result stays within bf16's rounding of the fp32 one, and the
choice follows the measured matmul speeds and the recipe."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tunesmith.config import load_recipe
from tunesmith.plan import precision as frozen_rule
from tunesmith.plan.precision import frozen_matmul_choice
from tunesmith.runs import create_run
from tunesmith.train.frozen_matmuls import FrozenBF16Linear, cast_frozen_linears

from .conftest import lora_tiny, make_tiny_project


def loss_and_grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
    return out.logits.detach(), grads


def test_the_frozen_linears_compute_in_bf16_and_the_adapter_and_head_stay_fp32(tiny_model_dir):
    model = lora_tiny(tiny_model_dir)
    ids = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(1))
    logits, grads = loss_and_grads(model, ids)
    halved = copy.deepcopy(model)
    layers = halved.config.num_hidden_layers
    cast = cast_frozen_linears(halved)
    assert cast.count == 7 * layers  # q k v o gate up down of each layer, not the LM head
    head = halved.get_output_embeddings()
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32
    for name, module in halved.named_modules():
        if name.endswith("base_layer"):
            assert type(module) is FrozenBF16Linear and module.weight.dtype == torch.bfloat16, name
    trained = {n: p for n, p in halved.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert all("lora_" in n for n in trained)
    half_logits, half_grads = loss_and_grads(halved, ids)
    assert half_logits.dtype == torch.float32 and half_grads.dtype == torch.float32
    assert not torch.equal(half_logits, logits)  # bf16 did run
    # the same as fp32 arithmetic on bf16-rounded inputs, weights and outputs of the frozen linears alone
    emulated = copy.deepcopy(model)
    for name, module in emulated.named_modules():
        if name.endswith("base_layer"):
            module.__class__ = RoundedToBF16Linear
    emulated_logits, emulated_grads = loss_and_grads(emulated, ids)
    assert float((half_logits - emulated_logits).norm() / emulated_logits.norm()) < 2e-3
    assert float((half_grads - emulated_grads).norm() / emulated_grads.norm()) < 1e-2
    # and near the fp32 step (this tiny model's random weights are sharper than a trained model's)
    assert float(torch.nn.functional.cosine_similarity(half_grads, grads, dim=0)) > 0.99
    # after training the fp32 weights come back: the model computes what it computed before the cast
    cast.restore()
    assert all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in halved.modules()
               if isinstance(m, torch.nn.Linear))
    restored_logits, restored_grads = loss_and_grads(halved, ids)
    assert torch.equal(restored_logits, logits) and torch.equal(restored_grads, grads)


class RoundedToBF16Linear(torch.nn.Linear):
    """fp32 arithmetic on the bf16 roundings of what FrozenBF16Linear multiplies, and of its result."""

    def forward(self, x):
        rounded = torch.nn.functional.linear(x.bfloat16().float(), self.weight.bfloat16().float())
        return rounded.bfloat16().float()


@pytest.mark.parametrize(("bf16", "precision", "device", "adapter", "method", "expected", "strategy"), [
    (4e11, "auto", "cpu", "lora", "sft", "bf16", "none"),   # AMX / AVX512-BF16: several times fp32
    (4e11, "auto", "cpu", "rslora", "sft", "bf16", "none"),
    (4e11, "auto", "cpu", "lora", "dpo", "bf16", "none"),   # measured on the bundled preference and CPT recipes
    (4e11, "auto", "cpu", "lora", "cpt", "bf16", "none"),
    (4e11, "auto", "cpu", "lora", "reward", "fp32", "none"),  # a reward model trains a head: not measured
    (5e10, "auto", "cpu", "lora", "sft", "fp32", "none"),   # emulated bf16: slower than fp32
    (4e11, "fp32", "cpu", "lora", "sft", "fp32", "none"),   # the recipe asks for fp32 throughout
    (4e11, "auto", "cuda", "lora", "sft", "fp32", "none"),  # a GPU has mixed precision
    (4e11, "auto", "cpu", "dora", "sft", "fp32", "none"),   # DoRA reads the base weight for its norm
    (4e11, "auto", "cpu", "lora", "grpo", "fp32", "none"),
    (4e11, "auto", "cpu", "lora", "sft", "fp32", "ddp"),   # each rank would measure apart
])
def test_the_choice_follows_the_measured_bf16_speed_and_the_recipe(monkeypatch, bf16, precision, device, adapter,
                                                                   method, expected, strategy):
    monkeypatch.setattr(frozen_rule, "cpu_matmul_peaks", lambda: (1e11, bf16))
    choice = frozen_matmul_choice(precision, device, adapter, method, strategy)
    assert choice["dtype"] == expected, choice
    assert choice["why"]


def test_the_matmul_peaks_are_measured_once_a_machine_and_the_first_result_kept(tmp_path, monkeypatch):
    measured: list[torch.dtype] = []

    def fake_peak(dtype, seconds):  # 2e11, 3e11 ... in call order
        measured.append(dtype)
        return 1e11 * (1 + len(measured))

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    monkeypatch.setattr(frozen_rule, "matmul_peak", fake_peak)
    frozen_rule.cpu_matmul_peaks.cache_clear()
    try:
        first = frozen_rule.cpu_matmul_peaks()
        repeats = frozen_rule.PEAK_REPEATS
        assert measured == [torch.float32] * repeats + [torch.bfloat16] * repeats
        assert first == (1e11 * (1 + repeats), 1e11 * (1 + 2 * repeats))  # the best of each dtype's measurements
        frozen_rule.cpu_matmul_peaks.cache_clear()  # as in another process on this machine: read, not measured
        assert frozen_rule.cpu_matmul_peaks() == first and len(measured) == 2 * repeats
        (kept,) = (tmp_path / "hardware").glob("cpu-matmul-peaks-*.json")
        frozen_rule.keep_first_peaks(kept, {"fp32_flops": 1.0, "bf16_flops": 1.0})  # one that measured meanwhile
        assert frozen_rule.read_peaks(kept) == first
        assert json.loads(kept.read_text())["machine"] == frozen_rule.machine_key()
        assert [p.name for p in kept.parent.iterdir()] == [kept.name]  # no draft left behind
    finally:
        frozen_rule.cpu_matmul_peaks.cache_clear()


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_training_says_which_dtype_the_frozen_base_ran_in(tmp_path, tiny_model_dir, monkeypatch, precision):
    from safetensors.torch import load_file

    from tunesmith.train import run_training

    monkeypatch.setattr(frozen_rule, "cpu_matmul_peaks", lambda: (1e11, 4e11))  # as with AMX, whatever the CPU
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         ["training.max_steps=2", f"training.precision={precision}"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    chosen = report["chosen"]
    if precision == "auto":
        assert chosen["frozen_matmuls"]["value"] == "bf16"
        assert report["throughput"]["frozen_matmuls"] == "bf16"
    else:
        assert "frozen_matmuls" not in chosen and "frozen_matmuls" not in report["throughput"]
    assert 0 < report["final_loss"] < float("inf")
    saved = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())  # the adapter as an fp32 run saves it
