"""`tunesmith plan`: the architecture read from config alone, the trained-parameter counts PEFT gets, the
estimate against the measured peak of real training processes, the advice, and `train`'s refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ORDERS, REPO
from tunesmith.config import validate_recipe
from tunesmith.plan import plan_recipe
from tunesmith.plan.architecture import read_architecture
from tunesmith.plan.devices import peak_rss_of_tunesmith
from tunesmith.plan.workload import trained_weights

PREFS = REPO / "examples" / "data" / "prefs"
ARITH = REPO / "examples" / "data" / "arith"
DATA = {"sft": ORDERS, "dpo": PREFS, "kto": PREFS, "grpo": ARITH}
GRPO = {"num_generations": 2, "max_completion_length": 8, "rewards": [{"name": "exact_match"}]}


def raw_recipe(root: Path, model_dir: Path, method: str = "sft", kind: str = "lora", **training) -> dict:
    adapter = {"kind": kind, **({"r": 8, "alpha": 16, "dropout": 0.0} if kind == "lora" else {})}
    return {
        "name": f"plan-{method}-{kind}", "model": {"source": str(model_dir)},
        "data": {"train": str(DATA[method] / "train.jsonl"), "eval": str(DATA[method] / "eval.jsonl"),
                 "max_length": 128},
        "method": {"kind": method, **(GRPO if method == "grpo" else {})},
        "adapter": adapter,
        "training": {"max_steps": 2, "lr": 1e-3, "batch_size": 4, "warmup_ratio": 0.0, "logging_steps": 1,
                     "save_steps": 1000, **training},
        "eval": {"probes": False}, "export": {"formats": ["adapter"]},
    }


def test_architecture_from_config_counts_what_the_model_holds(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    arch = read_architecture(tiny_model_dir)
    assert arch.parameters == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert arch.tied_embeddings and arch.layers == 2 and arch.hidden_size == 64
    assert len(arch.linears) == 2 * 7  # q, k, v, o, gate, up, down per block; the LM head is not a block's


@pytest.mark.parametrize("targets", ["all-linear", "qv", "mlp"])
def test_lora_parameter_count_is_what_peft_trains(targets, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.train.adapters import adapter_setup

    raw = raw_recipe(tmp_path, tiny_model_dir)
    raw["adapter"]["targets"] = targets
    recipe = validate_recipe(raw)
    model, _ = adapter_setup(AutoModelForCausalLM.from_pretrained(tiny_model_dir), recipe.adapter)
    if not hasattr(model, "peft_config"):
        from peft import get_peft_model

        model = get_peft_model(model, _)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained_weights(recipe, read_architecture(tiny_model_dir)).parameters == trained


def peak_rss_of_train(recipe_file: Path, runs: Path) -> float:
    """Peak RSS in bytes of one `tunesmith train` process, its own (VmHWM), not pytest's that it forked from."""
    peak, code, tail = peak_rss_of_tunesmith(["train", str(recipe_file), "--runs-dir", str(runs)], runs.parent)
    assert code == 0, tail
    return peak


@pytest.mark.parametrize(("method", "kind"), [("sft", "lora"), ("sft", "full"), ("sft", "qlora"), ("dpo", "lora"),
                                             ("grpo", "lora")])
def test_estimate_is_within_a_quarter_of_the_measured_peak(method, kind, tiny_model_dir, tmp_path):
    raw = raw_recipe(tmp_path, tiny_model_dir, method, kind)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    estimate = plan_recipe(validate_recipe({**raw, "base_dir": str(tmp_path)}), "cpu").peak_bytes
    measured = peak_rss_of_train(recipe_file, tmp_path / "runs")
    assert 0.75 <= estimate / measured <= 1.25, (estimate / 2**30, measured / 2**30)


def test_plan_json_names_every_component_and_scales_with_the_batch(tiny_model_dir, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw_recipe(tmp_path, tiny_model_dir)), encoding="utf-8")

    def plan(*sets: str) -> dict:
        command = [sys.executable, "-m", "tunesmith", "plan", str(recipe_file), "--json", "--device", "cuda:24GB"]
        for item in sets:
            command += ["--set", item]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    small, large = plan(), plan("training.batch_size=64")
    names = {c["name"] for c in small["components"]}
    assert {"weights", "activations", "logits and loss", "trained parameters, gradients, AdamW"} <= names
    activations = {r["name"]: r["bytes"] for r in small["components"]}["activations"]
    assert {r["name"]: r["bytes"] for r in large["components"]}["activations"] == pytest.approx(16 * activations,
                                                                                                rel=0.35)
    assert small["fits"] and small["device_memory_bytes"] == 24 * 2**30
    assert small["length_source"].startswith("the longest of") and small["data_problem"] is None


def test_plan_on_data_that_train_would_refuse_still_sizes_it_but_says_so_and_exits_1(tiny_model_dir, tmp_path):
    raw = raw_recipe(tmp_path, tiny_model_dir)
    raw["data"]["train"] = "broken.jsonl"
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{oops\n', encoding="utf-8")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    command = [sys.executable, "-m", "tunesmith", "plan", str(recipe_file), "--device", "cuda:24GB"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert "broken.jsonl, line 2" in report["data_problem"] and report["components"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1 and "Peak memory" in done.stderr
    assert "data: the data did not load" in done.stderr and "tunesmith data inspect" in done.stderr


@pytest.mark.parametrize(("adapter", "said"), [({"kind": "lora", "layers": [40]}, "block(s) [40] do not exist"),
                                                 ({"kind": "partial", "last_blocks": 99}, "adapter.last_blocks=99")])
def test_plan_refuses_blocks_the_model_does_not_have_as_train_does(tiny_model_dir, tmp_path, adapter, said):
    """plan printed "0 adapter parameters trained" (or every block) and exited 0 where train refused the recipe."""
    raw = raw_recipe(tmp_path, tiny_model_dir)
    raw["adapter"] = adapter
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "tunesmith", "plan", str(recipe_file), "--device", "cuda:24GB"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and said in " ".join(done.stderr.split()), done.stderr


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_recipe_too_big_for_the_device_gets_a_lighter_method_and_a_smaller_batch(device, tiny_model_dir, tmp_path):
    from tunesmith.plan import build_report
    from tunesmith.plan.architecture import Architecture, LinearLayer
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths

    raw = raw_recipe(tmp_path, tiny_model_dir, kind="full", batch_size=16)
    recipe = validate_recipe({**raw, "base_dir": str(tmp_path)})
    hidden, inter, layers = 4096, 11008, 32  # a 7B llama, on a 24 GB card
    linears = [LinearLayer(name, block, i, o) for block in range(layers) for name, i, o in (
        ("q_proj", hidden, hidden), ("k_proj", hidden, hidden), ("v_proj", hidden, hidden), ("o_proj", hidden, hidden),
        ("gate_proj", hidden, inter), ("up_proj", hidden, inter), ("down_proj", inter, hidden))]
    body = sum(x.in_features * x.out_features for x in linears)
    arch = Architecture("llama", body + 2 * 32000 * hidden, 2 * 32000 * hidden, 32000, hidden, inter, layers, 32, 32,
                        128, False, "bfloat16", 4096, linears)
    report = build_report(recipe, arch, Device(device, device, 24 * 2**30, 165e12, False), RowLengths(128, "t"))
    assert not report.fits
    advice = {a.what: a for a in report.advice}
    if device == "cpu":  # the frozen base in fp32 (28 GB for 7B parameters): only QLoRA's 4-bit base fits 24 GB
        # (bitsandbytes>=0.50 quantizes on a CPU too; tests/test_plan.py's qlora case trains with it)
        assert advice["method"].flags[0] == "--set adapter.kind=qlora", advice["method"]
    else:  # on a GPU a LoRA's frozen base loads in bf16 (14 GB): LoRA fits, at a smaller batch
        assert advice["method"].flags[:2] == ["--set adapter.kind=lora", "--set training.batch_size=4"]
    assert advice["largest batch"].value == "none fits"
    reward = validate_recipe({**raw, "method": {"kind": "reward"}, "base_dir": str(tmp_path)})  # no QLoRA for reward
    reward_report = build_report(reward, arch, Device(device, device, 24 * 2**30, 165e12, False), RowLengths(128, "t"))
    assert "qlora" not in str({a.what: a for a in reward_report.advice}["method"])
    assert report.peak_bytes > 16 * 7e9  # 16 bytes per trained parameter before any activation


@pytest.mark.parametrize(("kind", "precision", "strategy"), [("lora", "auto", "none"), ("qlora", "bf16", "none"),
                                                            ("lora", "fp32", "none"), ("full", "auto", "none"),
                                                            ("lora", "auto", "fsdp")])
def test_the_planned_weights_are_in_the_dtype_training_loads_the_base_in(kind, precision, strategy, tiny_model_dir,
                                                                          tmp_path):
    """The plan counted every base weight at 4 bytes; on a GPU under mixed precision training loads an adapter's
    frozen base in bf16 (train/common.frozen_base_dtype), so a 7B LoRA's weights were planned at twice their size."""
    import torch

    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths
    from tunesmith.train.common import frozen_base_dtype

    raw = raw_recipe(tmp_path, tiny_model_dir, kind=kind, precision=precision,
                     **({"distributed": {"strategy": strategy}} if strategy != "none" else {}))
    recipe = validate_recipe({**raw, "base_dir": str(tmp_path)})
    arch = read_architecture(tiny_model_dir)
    for device in ("cuda", "cpu"):
        processes = 2 if strategy != "none" else 1
        report = build_report(recipe, arch, Device(device, device, 2.0**36, 1e14, False, processes=processes),
                              RowLengths(128, "t"))
        weights = next(row for row in report.components if row.name == "weights")
        loaded = frozen_base_dtype(kind, precision if precision != "auto" else "bf16" if device == "cuda" else "fp32",
                                   device, strategy)
        per = torch.finfo(loaded).bits / 8
        if kind == "qlora":
            assert f"others x {per:.0f} B" in weights.how, weights.how
        else:
            expected = arch.parameters * per / (processes if strategy == "fsdp" else 1)
            assert weights.bytes == pytest.approx(expected), (device, weights.how)
    if precision == "auto":  # a GPU before Ampere (T4, V100): auto trains in fp32 there, the base loaded in fp32
        old_gpu = build_report(recipe, arch, Device("t4", "cuda", 2.0**36, 1e14, False, bf16=False),
                               RowLengths(128, "t"))
        weights = next(row for row in old_gpu.components if row.name == "weights")
        assert "(fp32)" in weights.how, weights.how
        from tunesmith.plan.devices import resolve_device

        t4 = resolve_device("t4")  # timed at its fp32 peak, the dtype auto trains in there, not fp16's 65 TFLOP/s
        assert not t4.bf16 and t4.peak_flops == 8.1e12 and resolve_device("a10g").bf16


def test_a_lighter_method_is_not_advised_at_a_batch_the_recipes_own_method_fits(tiny_model_dir, tmp_path):
    """LoRA that fits at batch 4 but not 8: the advice is batch 4 with accumulation, not QLoRA at batch 4."""
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths

    raw = raw_recipe(tmp_path, tiny_model_dir, batch_size=8)
    recipe = validate_recipe({**raw, "base_dir": str(tmp_path)})
    arch, lengths = read_architecture(tiny_model_dir), RowLengths(4096, "t")

    def peak(batch: int, memory: float = 2.0**40) -> float:
        small = recipe.model_copy(update={"training": recipe.training.model_copy(update={"batch_size": batch})})
        return build_report(small, arch, Device("cpu", "cpu", memory, 1e11, False), lengths).peak_bytes

    device = Device("cpu", "cpu", (peak(4) + peak(8)) / 2, 1e11, False)
    report = build_report(recipe, arch, device, lengths)
    advice = {a.what: a for a in report.advice}
    assert not report.fits and advice["largest batch"].value == "4"
    assert advice["method"].flags == [] and advice["method"].value == "lora (keep it)", advice["method"]


def test_the_plan_counts_the_kept_replay_log_probs_up_to_their_limit(tiny_model_dir, tmp_path):
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import REPLAY_MEAN_TOKENS, REPLAY_PROMPT_MEAN_TOKENS, RowLengths

    recipe = validate_recipe({**raw_recipe(tmp_path, tiny_model_dir), "base_dir": str(tmp_path)})
    arch = read_architecture(tiny_model_dir)

    def kept(memory: float, rows: int | None, kind: str = "cpu") -> float | None:
        report = build_report(recipe, arch, Device(kind, kind, memory, 1e11, False), RowLengths(128, "t", rows))
        return {c.name: c.bytes for c in report.components}.get("replay base log-probs (kept)")

    assert recipe.data.replay.ratio == 0.25  # beside the null space (NULL_SPACE_REPLAY_RATIO)
    assert kept(2.0**40, 200) == 50 * REPLAY_MEAN_TOKENS * arch.vocab_size * 4  # 0.25 x 200 rows
    assert kept(2.0**40, 1000) == 226 * REPLAY_MEAN_TOKENS * arch.vocab_size * 4  # the bundled set's 226 prompts
    assert kept(2.0**20, 200) == 0.25 * 2**20  # REFERENCE_CACHE_SHARE of the device's memory
    assert kept(2.0**20, 200, "cuda") == kept(2.0**40, 200)  # a GPU keeps up to 1 GiB, whatever its size
    assert kept(2.0**40, None) is None  # rows unknown: nothing said
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={
        "replay": recipe.data.replay.model_copy(update={"anchor_answer_tokens": 16})})})
    mean_row = REPLAY_PROMPT_MEAN_TOKENS + 16  # the anchor on each row's prompt and first 16 answer tokens
    assert kept(2.0**40, 200) == 50 * mean_row * arch.vocab_size * 4


def test_the_plan_says_what_the_null_space_takes_before_the_first_step(tiny_model_dir, tmp_path):
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths

    recipe = validate_recipe({**raw_recipe(tmp_path, tiny_model_dir), "base_dir": str(tmp_path)})
    arch = read_architecture(tiny_model_dir)

    def setup(rows: int | None, memory: float = 2.0**40, null_space: float | None = None):
        copy = recipe if null_space is None else recipe.model_copy(update={"data": recipe.data.model_copy(update={
            "replay": recipe.data.replay.model_copy(update={"null_space": null_space})})})
        report = build_report(copy, arch, Device("cpu", "cpu", memory, 1e11, False), RowLengths(128, "t", rows))
        return report.setup_seconds, report.setup_note

    seconds, note = setup(200)  # SFT with LoRA: the null space is on by default
    assert seconds > 0 and "replay tokens" in note and "eigendecompositions" in note
    assert 0 < setup(40)[0] < seconds  # fewer replay rows to read, the same decompositions
    assert setup(200, null_space=0) == (0.0, "")
    assert setup(200, memory=arch.parameters * 4 + 1024) == (0.0, "")  # its moments would not fit: skipped
    assert setup(None) == (0.0, "")  # rows unknown: nothing said


@pytest.mark.parametrize(("bf16_peak", "expected"), [(4e11, "bf16"), (5e10, "fp32")])
def test_the_plan_counts_the_frozen_bf16_matmuls_as_train_chooses_them(tiny_model_dir, tmp_path, monkeypatch,
                                                                      bf16_peak, expected):
    """Where train will multiply the frozen base in bf16 (a CPU with fast bf16, precision auto), the plan's step is
    shorter by the frozen linears' share and its memory holds their bf16 copy; elsewhere both are fp32's."""
    from tunesmith.plan import build_report, precision
    from tunesmith.plan.devices import Device
    from tunesmith.plan.timing import frozen_linear_flops, step_flops
    from tunesmith.plan.workload import RowLengths, micro_step

    monkeypatch.setattr(precision, "cpu_matmul_peaks", lambda: (1e11, bf16_peak))
    raw = {**raw_recipe(tmp_path, tiny_model_dir), "base_dir": str(tmp_path)}
    arch, lengths = read_architecture(tiny_model_dir), RowLengths(128, "t", 200)

    def plan(precision_setting: str, memory: float = 2.0**40):
        recipe = validate_recipe({**raw, "training": {**raw["training"], "precision": precision_setting}})
        return recipe, build_report(recipe, arch, Device("cpu", "cpu", memory, 1e11, False), lengths)

    recipe, auto = plan("auto")
    _, fp32 = plan("fp32")
    assert auto.frozen_matmuls == expected and fp32.frozen_matmuls == "fp32"
    copies = [c.bytes for c in auto.components if c.name == "bf16 copy of the frozen linears"]
    if expected == "fp32":
        assert copies == [] and auto.step_seconds == fp32.step_seconds and auto.peak_bytes == fp32.peak_bytes
        return
    assert copies == [2.0 * arch.block_linear_parameters] and auto.peak_bytes == fp32.peak_bytes + copies[0]
    speedup = precision.BF16_FROZEN_EFFICIENCY * bf16_peak / 1e11
    work = micro_step(recipe, lengths.typical(), packed=False, memory_bytes=2.0**40, accelerator=False)
    share = frozen_linear_flops(arch, trained_weights(recipe, arch, 2.0**40), work) / step_flops(
        arch, trained_weights(recipe, arch, 2.0**40), work)
    assert 0.3 < share < 1
    assert auto.step_seconds == pytest.approx(fp32.step_seconds * (1 - share + share / speedup), rel=1e-9)
    assert "in bf16" in auto.time_note and "this CPU multiplies bf16" in auto.frozen_matmuls_why
    # where the copy would take over a quarter of the free memory, train skips it, and so does the plan
    _, short = plan("auto", memory=3.0 * copies[0])
    assert short.frozen_matmuls == "fp32" and "would take over" in short.frozen_matmuls_why


def test_kto_unpaired_rows_beside_paired_held_out_ones_are_sized_not_a_crash(tiny_model_dir, tmp_path):
    """recipes/kto.yaml trains unpaired rows and holds out pairs: load_splits calls that shape
    "preference/unpaired_preference", and the plan (which train runs first) must size it; files of shapes no
    method trains on together are a data problem the plan names, not an internal error."""
    from tunesmith.models import load_tokenizer
    from tunesmith.plan.lengths import longest_row

    raw = raw_recipe(tmp_path, tiny_model_dir, method="kto")
    raw["data"].update(train=str(PREFS / "unpaired.jsonl"), eval=str(PREFS / "eval.jsonl"))
    lengths = longest_row(validate_recipe({**raw, "base_dir": str(tmp_path)}), load_tokenizer(tiny_model_dir))
    assert lengths.problem is None and "training sequences" in lengths.source and lengths.rows > 0

    raw["data"].update(train=str(ORDERS / "train.jsonl"))
    mixed = longest_row(validate_recipe({**raw, "base_dir": str(tmp_path)}), load_tokenizer(tiny_model_dir))
    assert "train.jsonl holds messages rows; method.kind kto needs" in mixed.problem  # what train says


def test_the_plan_counts_the_replay_anchor_of_a_preference_method(tiny_model_dir, tmp_path):
    """DPO with data.replay: the anchor's rows train beside the pairs and their base log-probabilities are kept, so
    the plan's peak and step time grow with it, as they do for SFT."""
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths

    arch = read_architecture(tiny_model_dir)

    def plan(ratio: float):
        raw = raw_recipe(tmp_path, tiny_model_dir, method="dpo")
        raw["data"]["replay"] = {"ratio": ratio}
        recipe = validate_recipe({**raw, "base_dir": str(tmp_path)})
        return build_report(recipe, arch, Device("cpu", "cpu", 2.0**40, 1e11, False), RowLengths(128, "t", 200))

    off, on = plan(0.0), plan(0.5)
    names = {c.name for c in on.components}
    assert "replay base log-probs (kept)" in names and "replay base log-probs (kept)" not in {
        c.name for c in off.components}
    assert on.peak_bytes > off.peak_bytes and on.step_seconds > off.step_seconds


def test_train_refuses_a_recipe_that_cannot_fit_before_loading_anything(tiny_model_dir, tmp_path):
    """A 70B llama's config beside a tokenizer and no weights at all: the plan alone must stop the run."""
    import shutil

    big = tmp_path / "llama-70b-config-only"
    big.mkdir()
    for file in tiny_model_dir.iterdir():
        if not file.name.endswith(".safetensors"):
            shutil.copy(file, big / file.name)
    config = json.loads((big / "config.json").read_text())
    config.update(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                  num_key_value_heads=8, tie_word_embeddings=False)
    (big / "config.json").write_text(json.dumps(config))
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw_recipe(tmp_path, big)), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(recipe_file), "--runs-dir",
                           str(tmp_path / "runs")], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-1500:]
    assert "The plan estimates" in done.stderr and "weights" in done.stderr and "--force" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_train_fits_a_recipe_by_micro_batches_or_checkpointing_only_where_the_recipe_left_them_open(
        tiny_model_dir, tmp_path, monkeypatch):
    import tunesmith.plan as plan_module
    import tunesmith.plan.fit as fit_module
    from tunesmith.plan.devices import Device
    from tunesmith.plan.fit import WillNotFit, fit_recipe

    monkeypatch.setattr(fit_module, "CPU_MICRO_TOKENS", 10**9)  # what fits, without the CPU's speed preference
    raw = raw_recipe(tmp_path, tiny_model_dir, batch_size=64)
    raw["training"].pop("gradient_checkpointing", None)
    recipe = validate_recipe({**raw, "base_dir": str(tmp_path)})
    first = plan_recipe(recipe, "cpu:24GB")
    half = plan_recipe(validate_recipe({**raw, "training": {**raw["training"], "batch_size": 32},
                                        "base_dir": str(tmp_path)}), "cpu:24GB")
    assert half.peak_bytes < first.peak_bytes_checkpointed < first.peak_bytes
    between = (first.peak_bytes + first.peak_bytes_checkpointed) / 2  # fits with checkpointing or half the batch

    def device_of(memory: float) -> None:
        monkeypatch.setattr(plan_module, "resolve_device", lambda spec: Device("small", "cpu", memory, 1e11, False))

    device_of(between)
    fitted, note = fit_recipe(recipe)  # rows of up to 125 tokens: 32 of them hold more than MIN_MICRO_TOKENS
    assert (fitted.training.batch_size, fitted.training.grad_accum) == (32, 2)
    assert not fitted.training.gradient_checkpointing and "micro-batches of 32 rows accumulated 2 times" in note
    assert "64 rows per step" in note and "Set training.grad_accum to decide" in note
    assert fitted.training.model_fields_set == recipe.training.model_fields_set  # the plan's, not the recipe's
    accumulation_given = validate_recipe({**raw, "training": {**raw["training"], "grad_accum": 1},
                                          "base_dir": str(tmp_path)})
    fitted, note = fit_recipe(accumulation_given)  # micro-batches are the recipe's: checkpointing instead
    assert fitted.training.gradient_checkpointing and fitted.training.batch_size == 64
    assert "activation checkpointing: on" in note and "micro-batches" not in note
    both = validate_recipe({**raw, "training": {**raw["training"], "gradient_checkpointing": False, "grad_accum": 1},
                            "base_dir": str(tmp_path)})
    with pytest.raises(WillNotFit, match="The plan estimates") as alone:
        fit_recipe(both)
    assert "fewer processes" not in alone.value.hint
    forced, note = fit_recipe(recipe, force=True)  # --force: as written, and said; a CPU's micro-batches still apply
    assert forced == recipe and note.startswith("note: The plan estimates")
    assert "--force: training it as written" in note
    monkeypatch.setattr(fit_module, "CPU_MICRO_TOKENS", 100)
    assert fit_recipe(recipe, force=True)[0].training.grad_accum > 1
    monkeypatch.setattr(fit_module, "CPU_MICRO_TOKENS", 10**9)
    device_of(first.peak_bytes * 2)
    assert fit_recipe(recipe) == (recipe, None)
    with pytest.raises(WillNotFit) as shared:  # 4 processes on this CPU: each gets a quarter of it, too little
        fit_recipe(both, processes=4, per_node=4)
    assert shared.value.hint.startswith("fewer processes: the 4 on this machine share its memory (--nproc)")


def test_the_micro_batch_note_does_not_give_max_length_as_the_longest_row_of_data_that_did_not_load(
        tiny_model_dir, tmp_path):
    """A file train would refuse was planned at data.max_length, and the note said "the longest row is 512 tokens"
    before the data error, of rows that were never measured."""
    from tunesmith.plan.fit import fit_recipe

    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "chosen": "a"}\n', encoding="utf-8")
    raw = raw_recipe(tmp_path, tiny_model_dir, "dpo", batch_size=16)
    raw["data"] = {"train": str(tmp_path / "bad.jsonl"), "max_length": 512}
    raw["method"] = {"kind": "sft"}
    _, note = fit_recipe(validate_recipe({**raw, "base_dir": str(tmp_path)}))
    assert "rows may be up to data.max_length, 512 tokens, as the data did not load" in note
    assert "the longest row is" not in note


def test_on_a_cpu_a_batch_of_long_rows_trains_as_micro_batches_of_at_most_1024_tokens(tiny_model_dir, tmp_path):
    from tunesmith.plan.devices import Device
    from tunesmith.plan.fit import CPU_MICRO_TOKENS, cpu_micro_batches

    def recipe_with(**training):
        raw = raw_recipe(tmp_path, tiny_model_dir, batch_size=8)
        return validate_recipe({**raw, "training": {**raw["training"], **training}, "base_dir": str(tmp_path)})

    cpu, gpu = Device("cpu", "cpu", 2.0**34, 1e11, False), Device("h200", "cuda", 2.0**37, 7e14, False)
    recipe = recipe_with()
    assert CPU_MICRO_TOKENS == 1024
    split = cpu_micro_batches(recipe, 256, cpu)  # 8 rows of 256 tokens: micro-batches of 4 rows, twice
    assert (split.training.batch_size, split.training.grad_accum) == (4, 2)
    assert split.training.model_fields_set == recipe.training.model_fields_set  # the plan's choice, not the recipe's
    assert cpu_micro_batches(recipe, 300, cpu).training.batch_size == 2  # 4 x 300 is over 1,024
    assert cpu_micro_batches(recipe, 4000, cpu).training.batch_size == 1  # one row is the least
    assert cpu_micro_batches(recipe, 128, cpu) is None  # 8 x 128 tokens: within
    assert cpu_micro_batches(recipe, 1024, gpu) is None
    assert cpu_micro_batches(recipe_with(grad_accum=1), 1024, cpu) is None  # the recipe decides


def test_micro_batches_come_before_checkpointing_when_they_hold_enough_tokens(tiny_model_dir, tmp_path):
    from tunesmith.plan.recommend import MIN_MICRO_TOKENS, fitting_changes

    recipe = validate_recipe({**raw_recipe(tmp_path, tiny_model_dir, batch_size=8), "base_dir": str(tmp_path)})
    changes = [(r.training.batch_size, r.training.grad_accum, r.training.gradient_checkpointing)
               for r in fitting_changes(recipe, length=MIN_MICRO_TOKENS // 2)]
    # 4 and 2 rows of 512 tokens hold 1,024 or more; one row does not, so it comes after checkpointing
    assert changes == [(4, 2, False), (2, 4, False), (8, 1, True), (1, 8, False), (4, 2, True), (2, 4, True),
                       (1, 8, True)]
    assert all(b * a == 8 for b, a, _ in changes)


def test_checkpointing_on_a_cpu_returns_freed_blocks_to_the_system():
    import ctypes

    from tunesmith.train.upstream import return_freed_blocks_to_the_system

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert return_freed_blocks_to_the_system()
    ctypes.CDLL("libc.so.6").mallopt(-3, 32 * 2**20)  # back to glibc's ceiling for the rest of the session


def test_train_stops_on_a_known_bad_package_combination(monkeypatch, capsys, tmp_path):
    import importlib.metadata

    from tunesmith.cli.app import main

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.48.0" if name == "bitsandbytes" else real(name))
    monkeypatch.setattr(sys, "argv", ["tunesmith", "train", str(REPO / "recipes" / "quickstart.yaml"),
                                      "--runs-dir", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as exited:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exited.value.code == 2, err
    assert "bitsandbytes 0.48.0" in err and "bitsandbytes>=0.50" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_plan_divides_what_the_strategy_shards_over_the_processes(kind, tiny_model_dir, tmp_path):
    """8 processes: ddp keeps a whole copy per process; deepspeed-zero2 divides gradients and AdamW; fsdp and
    deepspeed-zero3 divide the weights too; activations stay per process. On a CPU the processes of one machine
    share its memory."""
    recipe = validate_recipe(raw_recipe(tmp_path, tiny_model_dir, kind=kind))

    def parts(strategy: str, processes: int = 8, device: str = "h100-80gb") -> dict[str, float]:
        planned = recipe.model_copy(deep=True)
        planned.training.distributed = {"strategy": strategy}
        report = plan_recipe(planned, device, processes=processes)
        return {c.name: c.bytes for c in report.components} | {"device": report.device_memory_bytes}

    alone, ddp, zero2, zero3, fsdp = (parts("none", 1), parts("ddp"), parts("deepspeed-zero2"),
                                      parts("deepspeed-zero3"), parts("fsdp"))
    state = "trained parameters, gradients, AdamW"
    assert ddp == alone
    # alone (and ddp) a LoRA's frozen base loads in bf16 on a GPU; DeepSpeed and FSDP flatten one dtype: fp32
    fp32 = 2 if kind == "lora" else 1
    assert zero2["weights"] == alone["weights"] * fp32 and zero2["activations"] == alone["activations"]
    own = 0 if kind == "full" else 4 / 16  # an adapter's own weights are not sharded by ZeRO-2
    assert zero2[state] == pytest.approx(alone[state] * (own + (1 - own) / 8))
    for sharded in (zero3, fsdp):
        assert sharded["weights"] == pytest.approx(alone["weights"] * fp32 / 8)
        assert sharded[state] == pytest.approx(alone[state] / 8)
        assert sharded["activations"] == alone["activations"]
    assert parts("ddp", 2, "cpu")["device"] == pytest.approx(parts("none", 1, "cpu")["device"] / 2, rel=0.05)


def test_micro_batches_the_plan_chooses_train_the_same_step_and_say_so(tiny_model_dir, tmp_path, monkeypatch):
    """Micro-batches of 4 accumulated twice reach the update one batch of 8 reaches (the plan's promise), and the
    run's "chosen" table credits the split to the plan, not to the recipe."""
    import torch
    from safetensors.torch import load_file

    import tunesmith.plan as plan_module
    from tests.conftest import make_tiny_project
    from tunesmith.config import load_recipe
    from tunesmith.plan.devices import Device
    from tunesmith.plan.fit import fit_recipe
    from tunesmith.runs import create_run
    from tunesmith.train import run_training

    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         ["training.max_steps=1", "training.gradient_checkpointing=false"])  # rows too short
    whole = plan_recipe(recipe, "cpu:24GB")
    half = plan_recipe(recipe.model_copy(update={"training": recipe.training.model_copy(update={"batch_size": 4})}),
                       "cpu:24GB")
    memory = (whole.peak_bytes + max(half.peak_bytes, whole.peak_bytes_checkpointed)) / 2
    monkeypatch.setattr(plan_module, "resolve_device", lambda spec: Device("small", "cpu", memory, 1e11, False))
    fitted, note = fit_recipe(recipe)
    assert (fitted.training.batch_size, fitted.training.grad_accum) == (4, 2), note
    adapters = {}
    for name, planned in (("whole", recipe), ("micro", fitted)):
        run = create_run(planned, tmp_path / name)
        run_training(planned, run)
        adapters[name] = load_file(run.path / "adapter" / "adapter_model.safetensors")
        report = json.loads((run.path / "train.json").read_text())
    assert report["chosen"]["batch_size"]["value"] == "8 (2 micro-batches of 4)"
    why = report["chosen"]["batch_size"]["why"]
    assert "split into micro-batches by the plan: the whole batch would not fit" in why
    assert adapters["whole"].keys() == adapters["micro"].keys()
    moved = [k for k in adapters["whole"] if "lora_B" in k]
    assert moved and all(adapters["whole"][k].abs().max() > 0 for k in moved)  # the step changed the adapter
    for key in adapters["whole"]:
        torch.testing.assert_close(adapters["micro"][key], adapters["whole"][key], atol=1e-5, rtol=1e-4)


def test_doctor_says_what_train_will_change_to_fit_and_fails_only_what_cannot(tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    import tunesmith.plan as plan_module
    from tunesmith.doctor.recipe import memory_checks
    from tunesmith.plan.devices import Device

    raw = raw_recipe(tmp_path, tiny_model_dir, batch_size=64)
    recipe = validate_recipe({**raw, "base_dir": str(tmp_path)})
    first = plan_recipe(recipe, "cpu:24GB")
    verdicts = {}
    between = (first.peak_bytes + first.peak_bytes_checkpointed) / 2
    for name, memory in (("roomy", first.peak_bytes * 2), ("tight", between), ("tiny", 1e6)):
        device = Device(name, "cpu", memory, 1e11, False)
        monkeypatch.setattr(plan_module, "resolve_device", lambda spec, d=device: d)
        [verdicts[name]] = memory_checks(recipe)
    tight = Device("tight", "cpu", between, 1e11, False)
    monkeypatch.setattr(plan_module, "resolve_device", lambda spec: tight)
    report = plan_recipe(recipe)  # the plan's table says what train will do
    [will] = [a for a in report.advice if a.what == "train will use"]
    assert will.value == "2 micro-batches of 32" and not will.flags
    assert verdicts["roomy"].status == "pass"
    # doctor says what `plan` says: the recipe as train runs it on a CPU (the batch in micro-batches, which fits)
    assert verdicts["tight"].status == "pass"
    assert "as train runs it (micro-batches of 8 rows accumulated 8 times" in verdicts["tight"].detail
    assert verdicts["tiny"].status == "fail" and "The plan estimates" in verdicts["tiny"].detail


def test_the_chosen_table_credits_a_cpu_split_of_long_rows_to_speed_not_memory():
    """A batch that fits but holds over 1,024 tokens is split on a CPU for speed (plan/fit.py `cpu_micro_batches`);
    the table said "would not fit" for it, while `plan` had just said it fits."""
    from tunesmith.config import validate_recipe
    from tunesmith.train.defaults import batch_choice

    training = validate_recipe({"data": {"train": "t.jsonl"}, "training": {"batch_size": 1, "grad_accum": 8}}).training
    training = training.model_copy()
    training.model_fields_set.discard("grad_accum")  # as fit_recipe sets it: not in the recipe
    speed = batch_choice(training, "cpu", 866)
    assert speed["value"] == "8 (8 micro-batches of 1)"
    assert "on a CPU, micro-batches of up to 1,024 tokens" in speed["why"]
    assert "would not fit" in batch_choice(training, "cpu", 100)["why"]  # 8 x 100 fits 1,024: memory split it
    assert "would not fit" in batch_choice(training, "cuda", 866)["why"]


def test_plan_shows_the_cpu_split_train_will_make(tiny_model_dir, tmp_path):
    """`plan` sized 8 rows of the longest for a batch `train` then split on a CPU (micro-batches of up to 1,024
    tokens): it said 15.4 GiB where training took 3.7. It plans the split now, and says so."""
    from tunesmith.plan.fit import plan_as_trained

    rows = [{"prompt": " ".join(f"word{i}" for i in range(150 + n)), "completion": "ok"} for n in range(16)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    raw = raw_recipe(tmp_path, tiny_model_dir, batch_size=8)
    recipe = validate_recipe({**raw, "data": {"train": str(data), "eval_fraction": 0.25, "max_length": 1024},
                              "base_dir": str(tmp_path)})
    written = plan_recipe(recipe, "cpu:24GB")
    planned, note = plan_as_trained(recipe, "cpu:24GB")
    assert written.sequences == 8 and written.length * 8 > 1024
    assert planned.sequences * planned.length <= 1024 < written.sequences * written.length
    assert planned.peak_bytes < written.peak_bytes and "on a CPU, micro-batches of up to 1,024 tokens" in note
    assert plan_as_trained(recipe, "cuda:24GB") == (plan_recipe(recipe, "cuda:24GB"), None)  # a GPU: as written


def test_packed_rows_are_counted_as_the_blocks_they_fill(tiny_model_dir, tmp_path):
    """Steps per epoch from the tokens a packed epoch holds, not from the rows: 40 documents of ~2,500 tokens in
    512-token blocks are ~196 blocks (continued pre-training wraps them), 60 short paragraphs a few blocks."""
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths

    raw = raw_recipe(tmp_path, tiny_model_dir, batch_size=4, max_steps=-1, epochs=1, packing=True)
    recipe = validate_recipe({**raw, "method": {"kind": "cpt"}, "base_dir": str(tmp_path),
                              "data": {**raw["data"], "max_length": 512}})
    arch = read_architecture(tiny_model_dir)
    device = Device("cpu", "cpu", 2.0**40, 1e11, False)

    def steps(lengths: RowLengths, kind: str = "cpt") -> int:
        planned = recipe if kind == "cpt" else recipe.model_copy(update={"method": recipe.method.model_copy(
            update={"kind": "sft"})})
        return build_report(planned, arch, device, lengths).steps_per_epoch

    long_documents = RowLengths(512, "t", rows=40, mean=512.0, uncut_tokens=40 * 2500)
    assert steps(long_documents) == -(-196 // 4)  # ceil(100,000 / 512) = 196 blocks, 4 a step
    assert steps(RowLengths(40, "t", rows=60, mean=38.0, uncut_tokens=60 * 38)) == 2  # 2,280 tokens: 5 blocks
    # SFT's BFD packing cuts a row longer than the block: its tokens as cut
    assert steps(long_documents, "sft") == -(-40 // 4)
    unpacked = recipe.model_copy(update={"training": recipe.training.model_copy(update={"packing": False})})
    assert build_report(unpacked, arch, device, long_documents).steps_per_epoch == 10  # one row, one sequence


def test_replay_rows_that_join_the_sft_data_are_planned_as_rows(tiny_model_dir, tmp_path):
    """Full fine-tuning's default replay trains as ordinary rows (data.replay.loss sft): the plan counts them in the
    steps and sizes the batch for their length, as training appends them (train/sft.py with_replay)."""
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import REPLAY_TOKENS, RowLengths, replay_rows

    raw = raw_recipe(tmp_path, tiny_model_dir, kind="full", batch_size=8, max_steps=-1, epochs=1)
    raw["data"]["max_length"] = 512
    recipe = validate_recipe({**raw, "base_dir": str(tmp_path)})
    assert recipe.data.replay.resolved_loss("full") == "sft"
    arch = read_architecture(tiny_model_dir)
    report = build_report(recipe, arch, Device("cpu", "cpu", 2.0**40, 1e11, False),
                          RowLengths(68, "the longest of 49 training sequences", rows=49, mean=50.0))
    extra = replay_rows(recipe, 49)
    assert extra > 0 and report.steps_per_epoch == -(-(49 + extra) // 8)
    assert report.length == REPLAY_TOKENS and f"and {extra} replay rows (data.replay.loss sft)" in report.length_source
    lora = validate_recipe({**raw_recipe(tmp_path, tiny_model_dir, batch_size=8, max_steps=-1, epochs=1),
                            "base_dir": str(tmp_path)})  # LoRA's replay is the KL anchor: no rows join the data
    assert build_report(lora, arch, Device("cpu", "cpu", 2.0**40, 1e11, False),
                        RowLengths(68, "t", rows=49, mean=50.0)).steps_per_epoch == -(-49 // 8)


def test_a_gpu_given_by_its_size_keeps_room_for_the_cuda_context(tiny_model_dir, tmp_path):
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.memory import CUDA_CONTEXT_BYTES
    from tunesmith.plan.workload import RowLengths

    recipe = validate_recipe({**raw_recipe(tmp_path, tiny_model_dir), "base_dir": str(tmp_path)})
    arch = read_architecture(tiny_model_dir)
    lengths = RowLengths(128, "t", rows=100, mean=100.0)
    peak = build_report(recipe, arch, Device("cuda", "cuda", 2.0**40, 1e14, False), lengths).peak_bytes
    exactly = build_report(recipe, arch, Device("cuda", "cuda", peak, 1e14, False), lengths)
    assert exactly.outside_bytes == CUDA_CONTEXT_BYTES and not exactly.fits  # 100% of the card is not room
    assert build_report(recipe, arch, Device("cuda", "cuda", peak + CUDA_CONTEXT_BYTES, 1e14, False), lengths).fits
    measured = build_report(recipe, arch, Device("cuda", "cuda", peak, 1e14, True), lengths)  # the card's total,
    assert not measured.fits and measured.outside_bytes == CUDA_CONTEXT_BYTES  # read on this machine: the same
    from tunesmith.plan.devices import resolve_device

    sized, named = resolve_device("cuda:8GB"), resolve_device("t4")
    assert "an assumed peak" in build_report(recipe, arch, sized, lengths).time_note  # no card: no speed of its own
    assert "assumed" not in build_report(recipe, arch, named, lengths).time_note  # the data sheet's
    cpu_peak = build_report(recipe, arch, Device("cpu", "cpu", 2.0**40, 1e11, False), lengths).peak_bytes
    cpu = build_report(recipe, arch, Device("cpu", "cpu", cpu_peak, 1e11, False), lengths)
    assert cpu.fits and cpu.outside_bytes == 0  # a CPU's framework component is measured RSS


def test_plan_names_the_rows_max_length_cuts(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"row {i}"},  # long answers: cut, their start still trains
                          {"role": "assistant", "content": f"fine {i} " + "word " * (400 if i < 3 else 5)}]}
            for i in range(20)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = raw_recipe(tmp_path, tiny_model_dir)
    raw["data"] = {"train": str(data), "eval": raw["data"]["eval"], "max_length": 128}
    recipe_file = tmp_path / "long.yaml"
    recipe_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "tunesmith", "plan", str(recipe_file), "--device", "cpu:8GB"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert "3 training row(s) are longer than data.max_length 128 and are cut to it (the longest has 1," in said
    report = plan_recipe(validate_recipe({**raw, "base_dir": str(tmp_path)}), "cpu:8GB")
    assert report.cut_rows == 3 and report.longest_uncut > 400
    raw["data"]["max_length"] = 2048
    assert plan_recipe(validate_recipe({**raw, "base_dir": str(tmp_path)}), "cpu:8GB").cut_rows == 0


def test_a_batch_larger_than_the_training_data_is_said_and_never_advised(tiny_model_dir, tmp_path):
    """On 60 training rows the plan advised `largest batch 128` and planned `--set training.batch_size=64` as ten
    steps, without a word that every step went through the data more than once."""
    from tunesmith.plan import build_report
    from tunesmith.plan.devices import Device
    from tunesmith.plan.workload import RowLengths

    recipe = validate_recipe({**raw_recipe(tmp_path, tiny_model_dir, batch_size=64), "base_dir": str(tmp_path)})
    arch = read_architecture(tiny_model_dir)
    report = build_report(recipe, arch, Device("cuda", "cuda", 24 * 2**30, 165e12, False), RowLengths(54, "t", 60))
    advice = {a.what: a for a in report.advice}
    assert int(advice["largest batch"].value) <= 60
    past = advice["batch past the data"]
    assert past.value == "64 rows per step > 60 training rows" and "1.1 times" in past.why
    assert past.flags == ["--set training.batch_size=8", "--set training.grad_accum=1"]
    small = validate_recipe({**raw_recipe(tmp_path, tiny_model_dir, batch_size=8), "base_dir": str(tmp_path)})
    report = build_report(small, arch, Device("cuda", "cuda", 24 * 2**30, 165e12, False), RowLengths(54, "t", 60))
    assert "batch past the data" not in {a.what for a in report.advice}


def test_plan_and_train_read_a_cpu_peak_as_the_best_this_machine_has_shown(tmp_path, monkeypatch):
    """doctor said fp32 58 GFLOP/s, plan timed steps at 60 or 180 as its 0.3-second probe happened to read, and
    train's MFU used 92 in one run and 181 in the next: a peak measured while another process shares the cores
    reads 2-3x low. Plan and train now take the higher of their own measurement and the machine's kept peak."""
    from tunesmith.plan.precision import best_known_peak, keep_first_peaks, machine_key, peaks_file

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    assert best_known_peak("fp32", 60e9) == 60e9  # nothing kept yet: the measurement
    keep_first_peaks(peaks_file(machine_key()), {"machine": machine_key(), "fp32_flops": 150e9, "bf16_flops": 40e9})
    assert best_known_peak("fp32", 60e9) == 150e9 and best_known_peak("fp32", 181e9) == 181e9
    assert best_known_peak("bf16", 30e9) == 40e9


def test_the_largest_batch_advice_names_the_micro_batches_train_runs_not_a_batch_the_recipe_never_set():
    """On a CPU the plan sizes the recipe's 8 rows a step as micro-batches of 4 x 2; "training.batch_size 4 fits"
    read as a contradiction of the recipe's `batch_size: 8` (a newcomer's trial)."""
    from tunesmith.plan.recommend import largest_batch, with_micro_batch

    recipe = validate_recipe({"model": {"source": "m"}, "data": {"train": "t.jsonl"},
                              "training": {"batch_size": 8}})
    micro = largest_batch(with_micro_batch(recipe, 4), lambda candidate: candidate.training.batch_size <= 16)
    assert (micro.value, micro.why) == ("16", "micro-batches of 4 rows x 2 (8 rows a step) fit")
    whole = largest_batch(recipe, lambda candidate: candidate.training.batch_size <= 16)
    assert whole.why == "training.batch_size 8 fits"
