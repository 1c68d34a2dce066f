"""The fast path of training (issue 15): what it changes must not change what is learned, and what it measures
must be the batches' own counts. Speeds themselves are measured in benchmarks/train_throughput.py, not here."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.conftest import make_tiny_project
from tunesmith.config import load_recipe
from tunesmith.runs import create_run
from tunesmith.train.throughput import ModelShape, TokenCounter, attention_span, mfu, model_shape, training_flops


def lora_model(model_dir):
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from tunesmith.models import load_model

    model = load_model(model_dir, torch.float32, "cpu")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            init_lora_weights="gaussian"))


def loss_and_grads(model, batch, labels, fused: bool):
    model.zero_grad()
    out = model(**batch, labels=labels, fused_lm_head=True) if fused else model(**batch, labels=labels)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_scoring_only_labelled_positions_keeps_loss_and_gradients(tiny_model_dir, monkeypatch):
    """The CPU shim projects only the labelled positions; loss and gradients equal transformers' own loss."""
    import trl.trainer.utils as trl_utils

    from tunesmith.train.upstream import score_only_labelled_positions

    original = getattr(trl_utils._use_triton, "__wrapped__", trl_utils._use_triton)  # TRL's, even if patched
    monkeypatch.setattr(trl_utils, "_use_triton", original)  # restored after the test
    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL scores every position on a CPU
    score_only_labelled_positions()
    assert trl_utils._use_triton(torch.device("cpu"))
    model = lora_model(tiny_model_dir)
    ids = torch.randint(3, 500, (3, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :18] = -100  # a prompt: only the answer carries loss
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    reference_loss, reference = loss_and_grads(model, batch, labels, fused=False)
    loss, grads = loss_and_grads(model, batch, labels, fused=True)
    assert loss == pytest.approx(reference_loss, rel=1e-5)
    assert reference.keys() == grads.keys() and reference
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_token_counter_counts_padding_loss_and_packed_spans():
    padded = {"input_ids": torch.zeros(2, 5, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),
              "labels": torch.tensor([[-100, -100, 7, 8, 9], [-100, 4, -100, -100, -100]])}
    counter = TokenCounter()
    counter.count(padded)
    assert (counter.tokens, counter.real_tokens, counter.loss_tokens) == (10, 7, 4)
    assert counter.figures(2.0)["real_tokens_per_s"] == 3.5 and counter.figures(2.0)["padding_share"] == 0.3
    flat = {"input_ids": torch.zeros(1, 6, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1]])}
    assert attention_span(flat) == pytest.approx((16 + 4) / 6 / 2)  # each token attends within its own sequence
    assert attention_span(padded) == 2.5
    pairs = {"prompt_input_ids": torch.zeros(2, 3, dtype=torch.long), "prompt_attention_mask": torch.ones(2, 3),
             "chosen_input_ids": torch.zeros(2, 2, dtype=torch.long), "chosen_attention_mask": torch.ones(2, 2)}
    preference = TokenCounter()
    preference.count(pairs)
    assert (preference.tokens, preference.real_tokens, preference.loss_tokens) == (10, 10, 4)
    stacked = {"input_ids": torch.zeros(2, 4, dtype=torch.long),  # TRL 1.x DPO: chosen then rejected, answers marked
               "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
               "completion_mask": torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])}
    dpo = TokenCounter()
    dpo.count(stacked)
    assert (dpo.tokens, dpo.real_tokens, dpo.loss_tokens) == (8, 7, 3)
    grpo = TokenCounter()
    grpo.count([{"prompt": "x"}])  # prompts the trainer generates from: not tensors
    assert grpo.batches == 1 and grpo.tokens == 0


def test_flops_count_the_body_per_token_and_the_head_per_loss_token():
    counter = TokenCounter(tokens=100, real_tokens=80, loss_tokens=10)
    shape = ModelShape(frozen_body=1000, trainable=10, lm_head=500, layers=2, hidden=4)
    assert training_flops(counter, shape) == 80 * (4 * 1000 + 6 * 10) + 10 * 4 * 500
    assert mfu(1e9, 2.0, 1e9) == 0.5 and mfu(1.0, 0.0, 1.0) == 0.0


def test_frozen_matmuls_in_bf16_count_against_the_bf16_peak():
    """The frozen body's linears (4 per weight a task or anchor token, 2 a base-pass token) at the bf16 peak, the
    rest at fp32's: a run whose frozen matmuls ran in bf16 is not credited with beating the fp32 peak."""
    from tunesmith.train.throughput import frozen_linear_flops, mixed_peak

    counter = TokenCounter(tokens=100, real_tokens=80, loss_tokens=10, anchor_tokens=20, anchor_base_tokens=5)
    shape = ModelShape(frozen_body=1000, trainable=10, lm_head=500, layers=2, hidden=4)
    frozen = frozen_linear_flops(counter, shape)
    assert frozen == (80 + 20) * 4 * 1000 + 5 * 2 * 1000
    total = training_flops(counter, shape)
    assert 0 < frozen < total
    peak = mixed_peak(total, frozen, 1e9, 4e9)  # bf16 4x fp32
    assert peak == pytest.approx(total / (frozen / 4e9 + (total - frozen) / 1e9))
    assert 1e9 < peak < 4e9 and mixed_peak(total, 0.0, 1e9, 4e9) == pytest.approx(1e9)


def test_the_replay_anchor_counts_as_work_not_as_trained_tokens():
    counter = TokenCounter(tokens=100, real_tokens=80, loss_tokens=10)
    shape = ModelShape(frozen_body=1000, trainable=10, lm_head=500, layers=2, hidden=4)
    alone = training_flops(counter, shape)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # 7 real positions, rows of 4
    counter.count_anchor(mask)
    assert counter.anchor_tokens == 7 and counter.figures(1.0)["real_tokens_per_s"] == 80.0
    # the tuned pass: 4 per frozen, 6 per trained body parameter, 4 per head parameter
    tuned = 7 * (4 * 1000 + 6 * 10 + 4 * 500) + 12 * 7 * 2 * 2 * 4  # attention: 12 x real x span (4 / 2) x 2 x 4
    assert training_flops(counter, shape) == alone + tuned
    counter.count_base_pass(mask)  # the base's forward, where it ran (BaseReference keeps its result)
    assert counter.anchor_base_tokens == 7
    assert training_flops(counter, shape) == alone + tuned + 7 * 2 * (1000 + 500) + 4 * 7 * 2 * 2 * 4


def test_model_shape_counts_tied_embeddings_once(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    shape = model_shape(model)
    config = model.config
    embedding = config.vocab_size * config.hidden_size
    frozen = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if not p.requires_grad)
    assert shape.lm_head == embedding and shape.frozen_body == frozen - embedding
    assert shape.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert (shape.layers, shape.hidden) == (config.num_hidden_layers, config.hidden_size)


def test_blocks_below_the_lowest_adapter_count_forward_only(tiny_model_dir):
    """adapter.layers: last-half: the backward pass stops at the lowest adapted block, so the blocks below it cost
    2 FLOPs per weight (forward) instead of 4, and a third of their attention."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    everywhere = model_shape(lora_model(tiny_model_dir))
    upper = model_shape(get_peft_model(load_model(tiny_model_dir, torch.float32, "cpu"),
                                       LoraConfig(r=4, lora_alpha=8, layers_to_transform=[1],
                                                  target_modules=["q_proj", "v_proj", "down_proj"])))
    block0 = sum(p.numel() for n, p in load_model(tiny_model_dir, torch.float32, "cpu").named_parameters()
                 if ".layers.0." in n)
    assert (everywhere.frozen_unreached, everywhere.layers_unreached) == (0, 0)
    assert (upper.frozen_unreached, upper.layers_unreached) == (block0, 1) and block0 > 0
    counter = TokenCounter(tokens=10, real_tokens=10, loss_tokens=2, attention_flops=12.0 * 10 * 5)
    shape = ModelShape(frozen_body=1000, trainable=10, lm_head=500, layers=2, hidden=4, frozen_unreached=400,
                       layers_unreached=1)
    assert training_flops(counter, shape) == (10 * (4 * 600 + 2 * 400 + 6 * 10) + 2 * 4 * 500
                                              + 12.0 * 10 * 5 * (1 + 1 / 3) * 4)


def test_whole_model_training_counts_its_embeddings_as_a_lookup_and_a_trained_head(tiny_model_dir):
    """Full fine-tuning put the trained (tied) embedding in the body at 6 FLOPs a token, and its head at 4 per loss
    position: MFU read 14-22% high. The input embedding is a lookup; the trained head costs 6 per weight."""
    from tunesmith.models import load_model

    model = load_model(tiny_model_dir, torch.float32, "cpu")
    shape = model_shape(model)
    embedding = model.config.vocab_size * model.config.hidden_size
    everything = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert shape.trainable == everything - embedding and shape.frozen_body == 0 and shape.head_trained
    counter = TokenCounter(tokens=10, real_tokens=10, loss_tokens=3)
    assert training_flops(counter, shape) == 10 * 6 * (everything - embedding) + 3 * 6 * embedding


def test_a_trained_final_norm_does_not_hide_the_blocks_the_backward_pass_never_reaches(tiny_model_dir):
    """adapter.kind partial trains the last blocks and the final norm (above them all); the blocks below were
    charged forward and backward because a trained parameter sat outside the numbered blocks."""
    from tunesmith.models import load_model

    model = load_model(tiny_model_dir, torch.float32, "cpu")
    for name, parameter in model.named_parameters():
        parameter.requires_grad = ".layers.1." in name or name == "model.norm.weight"
    block0 = sum(p.numel() for n, p in model.named_parameters() if ".layers.0." in n)
    shape = model_shape(model)
    assert (shape.frozen_unreached, shape.layers_unreached) == (block0, 1) and not shape.head_trained
    model.get_input_embeddings().weight.requires_grad = True  # below the blocks: the backward reaches them all
    assert (model_shape(model).frozen_unreached, model_shape(model).layers_unreached) == (0, 0)


def test_a_dpo_reference_pass_counts_as_forward_work():
    """DPO/KTO score each trained batch under the reference too (TRL 1.x runs it inside the loss, unless the reference
    log-probabilities were precomputed); MFU left that pass out."""
    from tunesmith.train.throughput import count_trained_batches

    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 1],
                                                                                              [1, 1, 1, 0]]),
             "completion_mask": torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])}
    kto = {**batch, "KL_input_ids": torch.zeros(1, 3, dtype=torch.long), "KL_attention_mask": torch.ones(1, 3),
           "KL_completion_mask": torch.tensor([[0, 1, 1]])}  # KTO scores its KL sequences under the reference too

    class Trainer:  # TRL's batch fetch, as the counter meets it; the counter is under test, not TRL
        precompute_ref_logps = False

        def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], Any]:
            return [next(epoch_iterator) for _ in range(num_batches)], None

        def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> None:
            raise AssertionError("TRL calls this only to precompute")

    counter, trainer = TokenCounter(), Trainer()
    count_trained_batches(trainer, counter)
    trainer.get_batch_samples(iter([batch, kto]), 2, "cpu")
    assert (counter.reference_tokens, counter.reference_head_tokens) == (7 + 7 + 3, 3 + 3 + 2)
    shape = ModelShape(frozen_body=1000, trainable=10, lm_head=500, layers=2, hidden=4)
    without = replace(counter, reference_tokens=0, reference_head_tokens=0, base_attention_flops=0.0)
    attention = 4.0 * (7 * 4 / 2 + 7 * 4 / 2 + 3 * 3 / 2)  # 4 x real tokens x span (half the padded width)
    assert training_flops(counter, shape) == pytest.approx(
        training_flops(without, shape) + 17 * 2 * 1010 + 8 * 2 * 500 + attention * 2 * 4)
    precomputed, trainer.precompute_ref_logps = TokenCounter(), True  # passes run once, before training: none here
    count_trained_batches(trainer, precomputed)
    trainer.get_batch_samples(iter([batch]), 1, "cpu")
    assert precomputed.reference_tokens == 0 and precomputed.real_tokens == 7


def test_model_shape_counts_a_4bit_base_as_the_weights_it_holds(tiny_model_dir):
    """bitsandbytes packs two 4-bit weights per stored element: MFU's FLOPs must count weights, not bytes."""
    pytest.importorskip("bitsandbytes")
    from tunesmith.config import validate_recipe
    from tunesmith.models import load_model
    from tunesmith.train.adapters import model_load_kwargs

    recipe = validate_recipe({"data": {"train": "x"}, "adapter": {"kind": "qlora"}})
    quantized = model_shape(load_model(tiny_model_dir, **model_load_kwargs(recipe.adapter)))
    full = model_shape(load_model(tiny_model_dir, torch.float32, "cpu"))
    assert quantized.frozen_body > 0  # the quantized linears are frozen; the plain model trains everything
    assert quantized.frozen_body + quantized.trainable == full.frozen_body + full.trainable


def test_packing_auto_packs_only_with_a_variable_length_kernel(capsys):
    from tunesmith.train.sft import choose_packing

    sdpa = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert not choose_packing("auto", sdpa).on and choose_packing("auto", flash).on
    assert choose_packing(True, sdpa).on and not choose_packing(False, flash).on
    assert "rows are batched by similar length" in capsys.readouterr().err


def test_activation_checkpointing_is_passed_under_the_name_the_installed_transformers_knows(monkeypatch, tmp_path):
    import warnings
    from dataclasses import dataclass

    import transformers

    from tunesmith.train.common import activation_checkpointing_argument

    with warnings.catch_warnings():  # the installed transformers takes it, without its deprecation warning
        warnings.simplefilter("error", FutureWarning)
        for on in (True, False):
            args = transformers.TrainingArguments(output_dir=str(tmp_path), **activation_checkpointing_argument(on))
            assert args.gradient_checkpointing is on

    @dataclass
    class TrainingArgumentsOf517:  # transformers 5.17's fields: the old name only
        gradient_checkpointing: bool = False

    monkeypatch.setattr(transformers, "TrainingArguments", TrainingArgumentsOf517)
    assert activation_checkpointing_argument(False) == {"gradient_checkpointing": False}


def test_the_frozen_base_loads_in_the_half_dtype_only_where_it_stays_frozen_on_a_gpu():
    import torch

    from tunesmith.train.common import frozen_base_dtype

    assert frozen_base_dtype("lora", "bf16", "cuda") == torch.bfloat16
    assert frozen_base_dtype("qlora", "fp16", "cuda", "ddp") == torch.float16
    assert frozen_base_dtype("lora", "fp32", "cuda") == torch.float32
    assert frozen_base_dtype("lora", "bf16", "cpu") == torch.float32  # see resolve_precision
    for trains_the_base in ("full", "partial", "pissa"):
        assert frozen_base_dtype(trains_the_base, "bf16", "cuda") == torch.float32
    for shards in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        assert frozen_base_dtype("lora", "bf16", "cuda", shards) == torch.float32


def test_default_sft_run_groups_by_length_and_records_its_throughput(tmp_path, tiny_model_dir):
    from tunesmith.train import run_training

    recipe_path = make_tiny_project(tmp_path, tiny_model_dir, train_rows=24, eval_rows=4)
    text = recipe_path.read_text().replace("  packing: false\n", "")  # the default: auto
    recipe_path.write_text(text)
    recipe = load_recipe(recipe_path, ["training.max_steps=2"])
    assert recipe.training.packing == "auto"
    run = create_run(recipe, tmp_path / "runs")
    import tunesmith.train.sft as sft

    seen = {}
    original = sft.sft_config

    def spy(*args, **kwargs):
        seen["config"] = original(*args, **kwargs)
        return seen["config"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft, "sft_config", spy)
        run_training(recipe, run)
    assert seen["config"].train_sampling_strategy == "group_by_length" and not seen["config"].packing
    report = json.loads((run.path / "train.json").read_text())
    assert report["packing"] == {"on": False, "why": report["packing"]["why"]} and "sdpa" in report["packing"]["why"]
    speed = report["throughput"]
    assert speed["real_tokens"] <= speed["tokens"] and 0 < speed["loss_tokens"] < speed["real_tokens"]
    assert speed["real_tokens_per_s"] > 0 and speed["peak_gflops"] > 0
    # MFU against the peak; left out where the peak read lower than training did (measured on a busy CPU)
    assert 0 < speed["mfu"] <= 1 if speed["mfu"] is not None else speed["achieved_gflops"] > speed["peak_gflops"]
    # the tokens of the batches trained on, as the trainer's own count has them (not the one collated ahead)
    logged = [row["num_tokens"] for row in run.read_metrics() if "num_tokens" in row]
    assert logged and speed["real_tokens"] == int(float(logged[-1]))
    from tunesmith.plan.devices import own_peak_rss_bytes

    # the process's peak memory, as `plan` estimates it: at least the model's weights, at most the peak so far
    weights = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert weights < speed["peak_rss_bytes"] <= own_peak_rss_bytes() and speed["peak_cuda_bytes"] is None
    # beside them, what `tunesmith plan` gives for this recipe as trained (its own figures, computed again here)
    from tunesmith.plan.fit import plan_as_trained

    planned, (plan, _) = report["planned"], plan_as_trained(load_recipe(run.recipe_file))
    assert planned["peak_gib"] == round(plan.peak_bytes / 2**30, 2)
    assert planned["measured_peak_gib"] == round(speed["peak_rss_bytes"] / 2**30, 2)
    assert planned["measured_step_seconds"] == round(speed["seconds"] / report["steps"], 2)


def padded_share(order: list[int], lengths: list[int], batch_size: int) -> float:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded


SEED = 42


def length_sampler(rows: int, batch_size: int = 8):
    import random

    from datasets import Dataset

    from tunesmith.train.distributed import group_by_global_batch

    lengths = [random.Random(rows * 7 + i).randint(40, 1000) for i in range(rows)]
    trainer = SimpleNamespace(args=SimpleNamespace(train_sampling_strategy="group_by_length",
                                                   per_device_train_batch_size=batch_size,
                                                   gradient_accumulation_steps=1, seed=SEED),
                              train_dataset=Dataset.from_list([{"input_ids": [1] * n} for n in lengths]),
                              processing_class=None)
    group_by_global_batch(trainer)
    return trainer._get_train_sampler(), lengths


def test_a_small_set_is_grouped_by_length_as_one_mega_batch():
    """Fewer than four batches' worth of rows: transformers' sampler would batch them at random."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler, lengths = length_sampler(24)
    order = list(sampler)
    assert sorted(order) == list(range(24))
    fewest = padded_share(sorted(range(24), key=lambda i: lengths[i]), lengths, 8)
    assert padded_share(order, lengths, 8) == pytest.approx(fewest)
    torch.manual_seed(0)
    theirs = list(LengthGroupedSampler(8, lengths=lengths))
    assert padded_share(theirs, lengths, 8) > fewest + 0.05


def test_a_set_of_four_batches_or_more_is_grouped_as_transformers_groups_it():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler, lengths = length_sampler(80)
    ours = list(sampler)
    assert ours == list(LengthGroupedSampler(8, lengths=lengths, generator=torch.Generator().manual_seed(SEED)))


def test_each_epochs_order_comes_from_the_seed_and_the_epoch_not_the_global_random_state():
    """A run resumed inside epoch 2 draws that epoch's order in a fresh process (tests/test_resume.py): the order
    must be the one the uninterrupted run drew, whatever the global random state is by then."""
    sampler, _ = length_sampler(80)
    torch.manual_seed(0)
    sampler.set_epoch(2)
    first = list(sampler)
    torch.manual_seed(123)
    torch.rand(1000)
    assert list(sampler) == first
    sampler.set_epoch(3)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


PAGE_FAULTS_OF_TEN_STEPS = """
import resource, sys, torch
from tunesmith.train.upstream import keep_freed_blocks_for_reuse
if sys.argv[1] == "keep":
    assert keep_freed_blocks_for_reuse()
faults = []
for _ in range(10):  # a step's 64 MiB of logits, written and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[2:]))  # from the third step on: glibc settles its heap in the first two
"""


@pytest.mark.parametrize("mode", ["glibc-default", "keep"])
def test_kept_blocks_are_reused_without_touching_fresh_pages(mode):
    import subprocess
    import sys

    from tunesmith.train.upstream import glibc

    if glibc() is None:
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_TEN_STEPS, mode], capture_output=True, text=True,
                         check=True)
    faults = int(out.stdout.split()[-1])
    pages = 8 * 64 * 2**20 // 4096  # the last eight steps' 64 MiB, in 4 KiB pages
    if mode == "keep":
        assert faults < pages * 0.4  # the first steps' pages serve most later ones (a small block that splits the
        # freed one now and then sends a step to fresh pages)
    else:
        assert faults > pages * 0.9  # glibc unmaps a block over 32 MiB when it is freed: fresh pages each time


def test_an_mfu_over_100_percent_is_left_out_and_said_why(capsys):
    """A peak measured while another process held the cores read 58 GFLOP/s where training did 91: "MFU 156%"."""
    from tunesmith.train.common import peak_below_achieved, print_throughput

    assert peak_below_achieved(91e9 * 10, 10.0, 58e9) and not peak_below_achieved(50e9 * 10, 10.0, 58e9)
    speed = {"real_tokens": 1000, "loss_tokens": 100, "padding_share": 0.0, "seconds": 10.0, "real_tokens_per_s": 100.0,
             "peak_gflops": 58.4, "dtype": "fp32", "mfu": None, "achieved_gflops": 91.2, "peak_rss_bytes": None}
    print_throughput(speed)
    said = " ".join(capsys.readouterr().err.split())
    assert "91.2 GFLOP/s, MFU left out" in said and "58.4 GFLOP/s fp32 matmul peak was measured lower" in said
    print_throughput({**speed, "mfu": 0.5})
    assert "MFU 50% of this machine's 58.4 GFLOP/s fp32 matmul peak" in capsys.readouterr().err


def test_the_end_of_training_sets_the_plan_beside_the_measurement():
    from tunesmith.train.planned import planned_line

    line = planned_line({"peak_gib": 5.77, "measured_peak_gib": 4.65, "step_seconds": 5.7,
                         "measured_step_seconds": 2.4})
    assert "5.77 GiB peak (measured 4.65 GiB, plan/measured 1.24x)" in line
    assert "5.70 s a step (measured 2.40 s, plan/measured 2.38x)" in line
    assert "no plan to compare with (gone)" in planned_line({"error": "gone"})
    assert planned_line({"skipped": "dpo"}) is None
    assert planned_line({"peak_gib": 1.0, "measured_peak_gib": None, "step_seconds": 1.0,
                         "measured_step_seconds": None}) is None
