"""Issue 19: replay of general rows (data.replay) and the time budget (training.time_budget) on a tiny llama."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import load_example_generator, make_tiny_project
from tunesmith.config import Recipe, duration_seconds, load_recipe
from tunesmith.data.replay import BUNDLED_REPLAY, load_replay_prompts, pick_replay, replay_count
from tunesmith.errors import TunesmithError
from tunesmith.runs import create_run, open_run
from tunesmith.train import run_training
from tunesmith.train.budget import BUDGET_SAFETY, plan_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("90s", 90), ("1h30m", 5400), ("45", 45),
                                               ("1.5h", 5400), ("2m 30s", 150)])
def test_durations(text, seconds):
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10 days", "0s", "-5m", ""])
def test_bad_durations_are_refused_naming_the_key(tmp_path, tiny_model_dir, text):
    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    with pytest.raises(TunesmithError, match=r"training\.time_budget"):
        load_recipe(recipe, [f"training.time_budget={text!r}"])


def test_budget_and_replay_refused_for_methods_they_do_not_fit():
    data = {"train": "t.jsonl"}
    with pytest.raises(ValueError, match=r"time_budget works with method\.kind"):
        Recipe(data=data, method={"kind": "grpo"}, training={"time_budget": "5m"})
    with pytest.raises(ValueError, match=r"data\.replay works with method\.kind sft, cpt, dpo"):
        Recipe(data={**data, "replay": {"ratio": 0.1}}, method={"kind": "grpo"})
    with pytest.raises(ValueError, match=r"method\.kind=dpo trains the replay rows through the KL anchor only"):
        Recipe(data={**data, "replay": {"ratio": 0.1}}, method={"kind": "dpo"}, adapter={"kind": "full"})
    with pytest.raises(ValueError, match=r"method\.kind=kto trains the replay rows through the KL anchor only"):
        Recipe(data={**data, "replay": {"ratio": 0.1, "loss": "sft"}}, method={"kind": "kto"})
    assert Recipe(data={**data, "replay": {"ratio": 0.1}}, method={"kind": "dpo"}).data.replay.ratio == 0.1
    # the preference methods replay by default through the anchor, where it can work; cpt, grpo, reward do not
    assert Recipe(data=data, method={"kind": "dpo"}).data.replay.ratio == 0.5
    # sft: half the rows beside the null space (on by default for a LoRA with the anchor), else the anchor's own
    assert Recipe(data=data).data.replay.ratio == 0.25
    assert Recipe(data={**data, "replay": {"null_space": 0}}).data.replay.ratio == 0.5
    assert Recipe(data={**data, "replay": {"null_space": 0.9}}, method={"kind": "dpo"}).data.replay.ratio == 0.25
    assert Recipe(data=data, adapter={"kind": "ia3"}).data.replay.ratio == 0.5  # no A matrices: no null space
    assert Recipe(data=data, adapter={"kind": "full"}).data.replay.ratio == 0.5  # replay rows join training (sft)
    assert Recipe(data=data, training={"distributed": {"strategy": "fsdp"}}).data.replay.ratio == 0.5
    assert Recipe(data=data, method={"kind": "dpo"}, adapter={"kind": "full"}).data.replay.ratio == 0
    assert Recipe(data=data, method={"kind": "cpt"}).data.replay.ratio == 0
    assert Recipe(data=data, method={"kind": "grpo"}).data.replay.ratio == 0
    assert Recipe(data=data, method={"kind": "reward"}).data.replay.ratio == 0
    assert Recipe(data={**data, "replay": {"ratio": 0.1}}).data.replay.ratio == 0.1


def test_steps_given_only_when_written():
    assert not Recipe(data={"train": "t.jsonl"}).training.steps_given
    assert Recipe(data={"train": "t.jsonl"}, training={"epochs": 1}).training.steps_given
    assert Recipe(data={"train": "t.jsonl"}, training={"max_steps": 5}).training.steps_given


def test_plan_fills_the_budget_up_to_the_epoch_cap():
    plan = plan_steps(budget_s=100, step_s=2.0, steps_per_epoch=100)
    assert plan.steps == int(BUDGET_SAFETY * 100 / 2.0) and plan.epochs == pytest.approx(plan.steps / 100)
    capped = plan_steps(budget_s=1000, step_s=0.5, steps_per_epoch=10)
    assert capped.steps == 30 and capped.epochs == 3 and "3 epochs" in capped.why
    assert plan_steps(budget_s=1, step_s=10, steps_per_epoch=10).steps == 1
    spent = plan_steps(budget_s=5, step_s=1.34, steps_per_epoch=10, spent_s=13.3)  # set-up ate the whole budget
    assert spent.steps == 1 and "left no room for a step of 1.34 s after 13 s of set-up" in spent.why
    assert "runs past the budget" in spent.why and "fill" not in spent.why


def test_a_time_budget_is_a_duration_or_a_bare_number_of_seconds():
    from tunesmith.config import validate_recipe
    from tunesmith.errors import RecipeError

    def seconds(value):
        return validate_recipe({"data": {"train": "t.jsonl"}, "training": {"time_budget": value}}).training
    assert seconds(90).time_budget_seconds == 90 and seconds("1h30m").time_budget_seconds == 5400
    for bad in (0, "10 minutes", True):
        with pytest.raises(RecipeError, match=r"not a (positive )?duration"):
            seconds(bad)


def test_plan_adds_the_base_pass_only_to_the_replay_anchors_first_pass():
    """The first 10 steps cost 3 s (2 s + the base's 1 s pass), the rest 2 s: 95 usable seconds fit
    10 + floor(65 / 2) = 42 steps, where 3 s throughout would fit 31; a budget inside the first pass divides by 3 s."""
    plan = plan_steps(budget_s=100, step_s=2.0, steps_per_epoch=100, first_pass_s=1.0, first_pass_steps=10)
    assert plan.steps == 10 + int((BUDGET_SAFETY * 100 - 30) / 2.0) == 42
    assert "3.00 s for the first 10" in plan.why and plan.as_dict()["first_pass_steps"] == 10
    assert plan_steps(budget_s=20, step_s=2.0, steps_per_epoch=100, first_pass_s=1.0, first_pass_steps=10).steps == 6
    assert plan_steps(budget_s=100, step_s=2.0, steps_per_epoch=100, first_pass_steps=10).first_pass_steps == 0


def test_plan_counts_the_time_spent_before_training_against_the_budget():
    plan = plan_steps(budget_s=100, step_s=2.0, steps_per_epoch=100, spent_s=40)
    assert plan.steps == int(BUDGET_SAFETY * 60 / 2.0) and "60 s left of 100 s" in plan.why
    assert plan.as_dict()["spent_before_training_s"] == 40
    assert plan_steps(budget_s=100, step_s=2.0, steps_per_epoch=100, spent_s=150).steps == 1


def test_bundled_replay_set_is_its_generators_output_and_apart_from_the_probes():
    generator = load_example_generator("make_general")
    rows = generator.general_prompts()
    written = [json.loads(line) for line in BUNDLED_REPLAY.read_text(encoding="utf-8").splitlines()]
    assert written == rows and len(rows) >= 100
    generator.check_apart_from_probes(rows)  # raises SystemExit on a prompt too close to a probe
    probes = {json.loads(line)["prompt"] for line in
              (ROOT / "src/tunesmith/eval/probes/general.jsonl").read_text(encoding="utf-8").splitlines()}
    assert not probes & {r["prompt"] for r in rows}


def test_the_embedded_models_answers_are_shipped_for_every_bundled_prompt():
    """A first quickstart asks the base nothing: examples/data/make_replay_answers.py answered the whole set."""
    from tunesmith.data.replay import shipped_answers

    prompts = [json.loads(line)["prompt"] for line in BUNDLED_REPLAY.read_text(encoding="utf-8").splitlines()]
    shipped = shipped_answers("smollm2-135m-instruct", 160)
    assert set(shipped) == set(prompts)
    finished = [answer for answer in shipped.values() if answer is not None]
    assert len(finished) >= 0.8 * len(prompts) and all(answer.strip() for answer in finished)


def test_check_apart_from_probes_catches_a_copied_probe():
    generator = load_example_generator("make_general")
    with pytest.raises(SystemExit, match="too close"):
        generator.check_apart_from_probes([{"id": "x", "prompt": "What is 2 + 3? Answer with a number."}])


def test_replay_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "replay.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"answer": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"replay.jsonl, line 2: a replay row needs a text `prompt`"):
        load_replay_prompts("replay.jsonl", lambda p: tmp_path / p)
    with pytest.raises(TunesmithError, match=r"data\.replay\.source: no such file"):
        load_replay_prompts("missing.jsonl", lambda p: tmp_path / p)


def test_replay_sample_is_seeded_and_capped():
    rows = [{"prompt": str(i), "answer": None} for i in range(50)]
    assert replay_count(0.1, 400, 50) == 40 and replay_count(0.5, 400, 50) == 50 and replay_count(0.1, 4, 50) == 0
    first, again, other = pick_replay(rows, 10, 1), pick_replay(rows, 10, 1), pick_replay(rows, 10, 2)
    assert first == again and first != other
    assert [int(r["prompt"]) for r in first] == sorted(int(r["prompt"]) for r in first)


def test_replay_rows_are_trained_and_recorded(tmp_path, tiny_model_dir):
    """Rows with answers are replayed as written; the base answers the rest, and an answer it does not finish
    within max_new_tokens is left out and counted."""
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.replay import base_answers

    replay_file = tmp_path / "general.jsonl"
    given = [{"prompt": f"Say the number {i}.", "answer": f"{i}"} for i in range(6)]
    asked = [{"prompt": f"Tell me about {w}."} for w in ("rain", "snow", "wind", "fog", "hail", "sun")]
    replay_file.write_text("".join(json.dumps(r) + "\n" for r in given + asked), encoding="utf-8")
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=24, eval_rows=4),
                         ["data.replay.source=general.jsonl", "data.replay.ratio=0.5", "data.replay.max_new_tokens=8",
                          "training.max_steps=4"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)

    report = json.loads((run.path / "train.json").read_text())["replay"]
    manifest = open_run(run.path).manifest().train
    replayed = [json.loads(line) for line in (run.path / "data/replay.jsonl").read_text().splitlines()]
    assert report["wanted"] == 12 and report["available"] == 12
    assert report["rows"] == len(replayed) == manifest.replay.rows == 12 - report["left_out_unfinished"]
    by_prompt = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in replayed}
    assert all(by_prompt[g["prompt"]] == g["answer"] for g in given)
    model_dir = Path(open_run(run.path).manifest().train.base_model.path)
    answers = base_answers(load_model(model_dir, dtype=torch.float32, device="cpu"), load_tokenizer(model_dir),
                           [a["prompt"] for a in asked], 8, 6)
    assert answers.count(None) == report["left_out_unfinished"]
    assert [by_prompt.get(a["prompt"]) for a in asked] == answers  # the base's own greedy answers, or left out
    assert report["trained"]["trained_rows"] == report["rows"]
    # the anchor's passes are counted as work (MFU), apart from the trained task tokens
    speed = json.loads((run.path / "train.json").read_text())["throughput"]
    assert speed["anchor_tokens"] > 0 and speed["real_tokens"] > 0


def test_time_budget_sets_the_steps_and_saves_the_plan(tmp_path, tiny_model_dir):
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=32, eval_rows=4),
                         ["training.max_steps=-1", "training.time_budget=5m"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    plan = report["time_budget"]
    assert plan["measured_step_s"] > 0 and plan["steps_per_epoch"] == 4
    assert plan["steps"] == 12 and "3 epochs" in plan["why"]  # a tiny model fills its 3 epochs in seconds
    assert 0 < plan["spent_before_training_s"] < 300  # loading and measuring came out of the budget
    chosen = report["chosen"]
    assert chosen["steps"]["why"].startswith("training.time_budget 300 s") and chosen["lr"]["value"] > 0
    assert chosen["batch_size"]["why"] == "training.batch_size in the recipe"  # the tiny recipe sets it
    assert 0 < chosen["max_length"]["p99"] <= chosen["max_length"]["longest"] < chosen["max_length"]["value"]
    from tunesmith.card import write_model_card

    card = write_model_card(run).read_text(encoding="utf-8")
    assert "### Settings and why" in card and f"| steps | {chosen['steps']['value']} |" in card
    assert report["steps"] == plan["steps"] and "stopped_at_step" not in plan
    assert json.loads((run.path / "budget.json").read_text()) == {k: v for k, v in plan.items()}


def test_the_budget_measures_the_anchor_apart_where_fewer_micro_batches_carry_it(tmp_path, tiny_model_dir):
    """Micro-batches of one row, 4 a step, one replay row a step: the budget's measurement times the median batch once
    more without the anchor (which draws no replay rows) to count the anchor on one micro-batch a step, not four. The
    anchor's batches: the measurement's 4, then one a step."""
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"Say {i}.", "answer": f"{i}"}) + "\n" for i in range(8)),
                       encoding="utf-8")
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         [f"data.replay.source={general}", "data.replay.ratio=0.25", "data.replay.null_space=0",
                          "training.batch_size=1", "training.grad_accum=4", "training.max_steps=-1",
                          "training.time_budget=5m"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    drawn = report["replay"]["base_reference"]
    assert report["replay"]["rows_per_step"] == 1 and report["time_budget"]["measured_step_s"] > 0
    assert drawn["base_passes"] + drawn["batches_from_cache"] == 4 + report["steps"]


def test_time_budget_stops_a_run_whose_steps_were_given(tmp_path, tiny_model_dir, capsys):
    """A recipe that sets its steps keeps them and the budget only stops it; both are said, by key, with the fix,
    and a run stopped before half its steps is warned of and named as such in `runs list` and the card (it trained
    1 step at a learning rate still warming up, then evaluated and exported without a word)."""
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=32, eval_rows=4),
                         ["training.max_steps=100000", "training.time_budget=3s", "training.save_steps=100000"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    assert report["time_budget"]["steps"] is None
    assert 0 < report["time_budget"]["stopped_at_step"] == report["steps"] < 100000
    assert report["time_budget"]["planned_steps"] == 100000
    assert (run.path / "adapter" / "adapter_config.json").is_file()
    said = " ".join(capsys.readouterr().err.split())
    assert "the recipe sets training.max_steps: 100000, so the recipe decides the steps" in said
    assert f"warning: training stopped at step {report['steps']} of 100000 planned" in said
    from tunesmith.card import write_model_card
    from tunesmith.runs import run_summary

    assert f"the time budget stopped it at step {report['steps']} of 100000" in run_summary(run)["status"]
    card = write_model_card(run).read_text(encoding="utf-8")
    assert f"(the time budget stopped training at step {report['steps']} of 100000 planned)" in card


def test_anchor_kl_is_zero_at_the_base_and_grows_as_the_adapter_moves(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model
    from tunesmith.train.replay import ReplayBatches, anchor_kl, base_log_probs

    model = get_peft_model(load_model(tiny_model_dir, torch.float32, "cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * (n - 4) + list(range(n + 1, n + 5))}
                for n in (8, 12, 10)]
    batches = ReplayBatches(examples, 2, pad_id=0, seed=3)
    batch = batches.at(0, "cpu")
    left_out = batches.order(0)[2]  # the third row waits for the next batch
    assert batch[0].shape[0] == 2 and batch[2].sum() == sum(len(e["input_ids"]) for e in examples) - \
        len(examples[left_out]["input_ids"])
    assert anchor_kl(model, batch, base_log_probs(model, model, batch)).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    kl = anchor_kl(model, batch, base_log_probs(model, model, batch))  # LoRA B started at zero
    assert kl.item() > 1e-3
    kl.backward()  # the anchor trains the adapter, not the frozen base
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def lora_moved_from_base(tiny_model_dir):
    """The tiny model under a LoRA r 4 whose B is drawn at random, so the tuned model differs from the base."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    model = get_peft_model(load_model(tiny_model_dir, torch.float32, "cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model


def test_the_anchor_packs_short_rows_and_gives_the_padded_batch_kl_and_gradients(tiny_model_dir):
    import torch.nn.functional as F

    from tunesmith.train.replay import ReplayBatches, anchor_kl, base_log_probs, packed_replay
    from tunesmith.train.throughput import replay_attention_pairs

    model = lora_moved_from_base(tiny_model_dir)
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * n} for n in (4, 13, 7)]
    batch = ReplayBatches(examples, 3, pad_id=0, seed=1).at(0, "cpu")
    assert packed_replay(model, batch)
    assert replay_attention_pairs(batch[2], packed=True) == (4 * 4 + 13 * 13 + 7 * 7) / 2
    assert replay_attention_pairs(batch[2], packed=False) == (4 + 13 + 7) * 13 / 2

    def padded_kl() -> torch.Tensor:  # the anchor as one padded batch, attention mask and all
        ids, _, mask = batch
        scored = mask[:, 1:].bool()
        with torch.no_grad(), model.disable_adapter():
            base = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1][scored], dim=-1)
        tuned = model(input_ids=ids, attention_mask=mask).logits[:, :-1][scored]
        return F.kl_div(F.log_softmax(tuned, dim=-1), base, log_target=True, reduction="batchmean")

    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    expected = padded_kl()
    expected_grads = torch.autograd.grad(expected, lora)
    reference = base_log_probs(model, model, batch)
    assert reference.shape[0] == (4 - 1) + (13 - 1) + (7 - 1)
    kl = anchor_kl(model, batch, reference)
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5) and kl.item() > 1e-3
    for got, want in zip(torch.autograd.grad(kl, lora), expected_grads, strict=True):
        assert (got - want).norm() <= 1e-4 * want.norm(), ((got - want).abs().max(), want.abs().max())


def test_replay_rows_pack_only_where_it_saves_flops_under_sdpa():
    from types import SimpleNamespace

    from tunesmith.train.replay import packing_pays

    smollm2 = SimpleNamespace(hidden_size=576, intermediate_size=1536, _attn_implementation="sdpa")
    assert packing_pays([46, 90, 120, 193], smollm2)  # short rows of spread lengths: the padding costs more
    assert not packing_pays([2048] * 4, smollm2)  # long rows of one length: packing only adds attention
    assert not packing_pays([193], smollm2)
    assert not packing_pays([46, 90, 120, 193], SimpleNamespace(**{**vars(smollm2),
                                                                   "_attn_implementation": "flash_attention_2"}))


def test_the_base_reference_is_computed_once_a_row_and_gives_the_kl_a_fresh_base_pass_gives(tiny_model_dir, capsys):
    from tunesmith.train.replay import BaseReference, ReplayBatches, anchor_kl, base_log_probs
    from tunesmith.train.throughput import TokenCounter

    model = lora_moved_from_base(tiny_model_dir)
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * n} for n in (8, 12, 10, 6, 9)]
    replay = ReplayBatches(examples, 2, pad_id=0, seed=3)
    cached, counter = BaseReference(), TokenCounter(None)
    cached.on_base_pass = counter.count_base_pass
    references = []
    for draw in range(6):  # over two passes, the rows meeting other rows (other padding) than when they were kept
        rows = replay.rows(draw)
        batch, reference = cached.log_probs(replay, rows, model, model, "cpu")
        references.append(reference)
        fresh = base_log_probs(model, model, batch)
        assert reference.shape == fresh.shape
        assert torch.allclose(reference, fresh, atol=1e-5)
        assert anchor_kl(model, batch, reference).item() == pytest.approx(
            anchor_kl(model, batch, fresh).item(), rel=1e-5)
    # 5 rows in batches of 2: the first pass's 3 batches run the base, each row once (the third draw meets the
    # second pass's first row, kept by then), the next 3 draws come from the cache
    assert cached.report()["rows_kept"] == 5 and cached.base_passes == 3 and cached.reused == 3
    # what it said it would keep for all rows (printed once, before the first pass) is what it kept
    said = re.search(r"\(([\d,.]+) MB for all 5 rows, within the", capsys.readouterr().err)
    assert said and float(said[1].replace(",", "")) == round(cached.used_bytes / 2**20, 1) > 0
    assert counter.anchor_base_tokens == sum(len(e["input_ids"]) for e in examples)
    partial = BaseReference()  # a run that draws fewer rows than the set computes only the rows it draws
    partial.log_probs(replay, replay.rows(0), model, model, "cpu")
    assert partial.report()["rows_kept"] == 2 and partial.base_passes == 1
    resumed = BaseReference()  # resumed in the second pass: each row from its first-pass batch, to the bit
    for draw in range(3, 6):
        assert torch.equal(resumed.log_probs(replay, replay.rows(draw), model, model, "cpu")[1], references[draw])
    assert resumed.base_passes == 3
    small = BaseReference(limit_bytes=1)  # no row fits: every draw runs the base pass, as without a cache
    for draw in range(3):
        small.log_probs(replay, replay.rows(draw), model, model, "cpu")
    assert small.report()["rows_kept"] == 0 and small.reused == 0 and small.base_passes == 3


def test_replay_batches_cycle_through_every_row_before_repeating():
    from tunesmith.train.replay import ReplayBatches

    examples = [{"input_ids": [i + 1, i + 2], "labels": [-100, i + 2]} for i in range(5)]
    stream = ReplayBatches(examples, 2, pad_id=0, seed=1)
    seen = [int(ids[0]) - 1 for draw in range(5) for ids in stream.at(draw, "cpu")[0]]
    assert sorted(seen[:5]) == [0, 1, 2, 3, 4] and len(seen) == 10
    again = ReplayBatches(examples, 2, pad_id=0, seed=1)  # a resumed run: the same draw, the same rows
    assert again.at(3, "cpu")[0].tolist() == stream.at(3, "cpu")[0].tolist()


def test_replay_kl_logs_the_anchor_and_sft_joins_the_rows(tmp_path, tiny_model_dir):
    replay_file = tmp_path / "general.jsonl"
    replay_file.write_text("".join(json.dumps({"prompt": f"Say {i}.", "answer": f"{i}"}) + "\n" for i in range(8)),
                           encoding="utf-8")
    reports = {}
    for loss in ("kl", "sft"):
        recipe = load_recipe(make_tiny_project(tmp_path / loss, tiny_model_dir, train_rows=16, eval_rows=4),
                             [f"data.replay.source={replay_file}", "data.replay.ratio=0.5", f"data.replay.loss={loss}",
                              "training.max_steps=4", "training.logging_steps=1"])
        run = create_run(recipe, tmp_path / loss / "runs")
        run_training(recipe, run)
        reports[loss] = json.loads((run.path / "train.json").read_text())
        logged = [m for m in run.read_metrics() if "loss" in m]
        assert any("replay_kl" in m for m in logged) == (loss == "kl")
        weight = recipe.data.replay.weight
        assert all(m["replay_term"] == pytest.approx(weight * m["replay_kl"], abs=3e-6)  # each rounded to 6 places
               for m in logged if "replay_kl" in m), [(m["replay_term"], m["replay_kl"]) for m in logged]
    assert reports["kl"]["replay"]["loss"] == "kl" and reports["kl"]["replay"]["rows_per_step"] == 4
    assert reports["sft"]["replay"]["loss"] == "sft"
    # sft: the 8 replay rows are training rows (4 steps x 8 rows draw from 24); kl: they are not
    assert reports["sft"]["throughput"]["loss_tokens"] != reports["kl"]["throughput"]["loss_tokens"]


def test_fewer_replay_rows_than_micro_batches_ride_on_that_many_spread_evenly():
    """2 replay rows a step over 8 micro-batches: the 4th and 8th carry one each, the draws numbered by step, and the
    term scaled by 8 / 2; before training (the time budget's measurement) every batch draws, as a step's would."""
    from types import SimpleNamespace

    from tunesmith.train.replay import anchored

    trainer = anchored(object).__new__(anchored(object))
    trainer.args = SimpleNamespace(gradient_accumulation_steps=8)
    trainer.replay_micro_batches, trainer.replay_training, trainer.replay_paused = 2, True, False
    trainer.replay_step, trainer.replay_micro = -1, 0
    draws = []
    for step in range(2):
        trainer.state = SimpleNamespace(global_step=step)
        draws.append([trainer.replay_draw() for _ in range(8)])
    assert draws == [[None, None, None, 0, None, None, None, 1], [None, None, None, 2, None, None, None, 3]]
    assert trainer.carrying_micro_batches() == 2
    trainer.replay_micro_batches = None  # as many rows as micro-batches, or more: every micro-batch draws
    trainer.state, trainer.replay_step = SimpleNamespace(global_step=1), -1
    assert [trainer.replay_draw() for _ in range(8)] == list(range(8, 16))
    trainer.replay_micro_batches, trainer.replay_training = 2, False
    assert trainer.carrying_micro_batches() == 8


def test_a_replay_row_on_one_micro_batch_anchors_the_step_as_it_does_the_whole_batch(tmp_path, tiny_model_dir):
    """Batch 4 with one replay row a step (ratio 0.25) reaches the adapter of 4 micro-batches of 1 accumulated, whose
    one replay row rides on the last of them: the same row, the same weight. Were every micro-batch to carry one (4
    rows a step) or the term not scaled up by 4, the KL's pull (weight 50) would differ. Two steps, since the KL's
    gradient is zero while the adapter is still at the base."""
    from safetensors.torch import load_file

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"Name a colour, number {i}.", "answer": f"Blue {i}."}) + "\n"
                               for i in range(1, 9)), encoding="utf-8")
    adapters, reports = {}, {}
    for name, batch, accumulate in (("whole", 4, 1), ("micro", 1, 4)):
        recipe = load_recipe(make_tiny_project(tmp_path / name, tiny_model_dir, train_rows=16, eval_rows=4),
                             [f"data.replay.source={general}", "data.replay.ratio=0.25", "data.replay.weight=50",
                              "data.replay.null_space=0", "training.max_steps=2", f"training.batch_size={batch}",
                              f"training.grad_accum={accumulate}", "training.precision=fp32", "training.lr=0.01"])
        run = create_run(recipe, tmp_path / name / "runs")
        run_training(recipe, run)
        adapters[name] = load_file(run.path / "adapter" / "adapter_model.safetensors")
        reports[name] = json.loads((run.path / "train.json").read_text())["replay"]
    for report in reports.values():  # one row a step, two steps: two anchor batches in all
        assert report["rows_per_step"] == 1
        assert report["base_reference"]["base_passes"] + report["base_reference"]["batches_from_cache"] == 2
    for key in adapters["whole"]:
        torch.testing.assert_close(adapters["micro"][key], adapters["whole"][key], atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_adapters_replay_as_training_rows_by_default(tmp_path, tiny_model_dir, kind):
    """Virtual tokens change every row the model reads, so the KL anchor (plain token rows through the model) is not
    theirs: the default replay trains as rows (it crashed in the anchor's forward pass), and kl is refused by name."""
    replay_file = tmp_path / "general.jsonl"
    replay_file.write_text("".join(json.dumps({"prompt": f"Say {i}.", "answer": f"{i}"}) + "\n" for i in range(8)),
                           encoding="utf-8")
    default = Recipe(data={"train": "t.jsonl"}, adapter={"kind": kind}).data.replay
    assert default.ratio == 0.5 and default.resolved_loss(kind) == "sft"
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         [f"adapter.kind={kind}", f"data.replay.source={replay_file}", "data.replay.ratio=0.5",
                          "training.max_steps=2"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    assert json.loads((run.path / "train.json").read_text())["replay"]["loss"] == "sft"
    with pytest.raises(ValueError, match=rf"data\.replay\.loss=kl runs the replay rows as plain token rows, and "
                                         rf"adapter\.kind={kind} adds virtual tokens"):
        Recipe(data={"train": "t.jsonl", "replay": {"loss": "kl"}}, adapter={"kind": kind})


def test_replay_kl_is_refused_for_adapters_that_change_the_base():
    with pytest.raises(ValueError, match=r"data\.replay\.loss=kl needs the untouched base"):
        Recipe(data={"train": "t.jsonl", "replay": {"ratio": 0.1, "loss": "kl"}}, adapter={"kind": "full"})
    assert Recipe(data={"train": "t.jsonl"}, adapter={"kind": "full"}).data.replay.resolved_loss("full") == "sft"
    assert Recipe(data={"train": "t.jsonl"}).data.replay.resolved_loss("lora") == "kl"


@pytest.mark.parametrize(("kind", "parameters", "lr"), [("lora", 135e6, 1e-3), ("qlora", 7e9, 2e-4),
                                                        ("dora", 70e9, 1e-4), ("full", 135e6, 2e-5),
                                                        ("prompt_tuning", 1e9, 3e-2), ("ia3", 3e9, 3e-3)])
def test_auto_lr_by_adapter_kind_and_base_size(kind, parameters, lr):
    from tunesmith.train.defaults import auto_lr

    assert auto_lr(kind, int(parameters))[0] == lr


def test_auto_lr_is_resolved_before_training_and_recorded(tmp_path, tiny_model_dir):
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=16, eval_rows=4),
                         ["training.lr=auto", "training.max_steps=2"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    chosen = json.loads((run.path / "train.json").read_text())["chosen"]["lr"]
    assert chosen["value"] == 1e-3 and chosen["why"].startswith("auto: LoRA on a")
    assert open_run(run.path).load_recipe().training.lr == "auto"  # the snapshot keeps what the user wrote


def test_cli_time_budget_flag_is_validated_before_anything_loads(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    recipe = make_tiny_project(tmp_path, tiny_model_dir, train_rows=8, eval_rows=2)
    result = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(recipe), "--time-budget", "soon",
                             "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "training.time_budget" in result.stderr and "not a duration" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_eval_max_new_tokens_auto_follows_the_longest_reference(tiny_model_dir):
    from types import SimpleNamespace

    from tunesmith.eval.decoding import resolve_max_new_tokens
    from tunesmith.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    long_answer = " ".join(["word"] * 60)
    longest = len(tokenizer(long_answer, add_special_tokens=False)["input_ids"])
    section = SimpleNamespace(max_new_tokens="auto")
    chosen = resolve_max_new_tokens(section, tokenizer, ["billing", long_answer])
    assert section.max_new_tokens == chosen["value"] == round(longest * 1.25) + 8
    assert f"{longest} tokens" in chosen["why"]
    short = SimpleNamespace(max_new_tokens="auto")
    assert resolve_max_new_tokens(short, tokenizer, ["yes", "no"])["value"] == 16  # the floor
    given = SimpleNamespace(max_new_tokens=5)
    assert resolve_max_new_tokens(given, tokenizer, [long_answer]) == {"value": 5,
                                                                      "why": "eval.max_new_tokens in the recipe"}


def test_shipped_answers_cover_the_bundled_prompts():
    from tunesmith.data.replay import SHIPPED_ANSWERS, shipped_answers

    prompts = [json.loads(line)["prompt"] for line in BUNDLED_REPLAY.read_text(encoding="utf-8").splitlines()]
    for path in SHIPPED_ANSWERS.glob("*.json"):
        answers = shipped_answers(path.stem, 160)
        assert list(answers) == prompts and all(a is None or a.strip() for a in answers.values())
    assert shipped_answers("smollm2-135m-instruct", 160) and not shipped_answers("smollm2-135m-instruct", 64)


def test_an_embedded_model_replays_its_shipped_answers_without_generating(tmp_path, tiny_model_dir, monkeypatch):
    """Unpacked by tunesmith (under $TUNESMITH_HOME/models) and loaded in fp32, an embedded model's bundled prompts
    take the shipped answers; generation is not called at all."""
    import shutil

    import tunesmith.data.replay as replay_data
    import tunesmith.train.replay as replay_module
    from tunesmith.config import load_recipe as load

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    unpacked = tmp_path / "home" / "models" / "tiny-llama0"
    shutil.copytree(tiny_model_dir, unpacked)
    prompts = [json.loads(line)["prompt"] for line in BUNDLED_REPLAY.read_text(encoding="utf-8").splitlines()]
    shipped = {p: (None if i % 5 == 0 else f"shipped answer {i}") for i, p in enumerate(prompts)}
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers" / "tiny-llama0.json").write_text(json.dumps({"max_new_tokens": 160, "answers": shipped}))
    monkeypatch.setattr(replay_data, "SHIPPED_ANSWERS", tmp_path / "answers")
    monkeypatch.setattr(replay_module, "EMBEDDED", {"tiny-llama0": None})
    def generate(model, tokenizer, prompts, *args):
        assert not prompts, "generated instead of shipped"
        return []

    monkeypatch.setattr(replay_module, "base_answers", generate)
    recipe = load(make_tiny_project(tmp_path, unpacked, train_rows=40, eval_rows=4),
                  ["data.replay.ratio=1", "training.max_steps=1"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())["replay"]
    replayed = [json.loads(line) for line in (run.path / "data/replay.jsonl").read_text().splitlines()]
    assert report["answers_shipped"] == report["answered_by_base"] == 40
    assert all(shipped[r["messages"][0]["content"]] == r["messages"][1]["content"] for r in replayed)
    assert report["rows"] == len(replayed) == 40 - report["left_out_unfinished"] and report["left_out_unfinished"] > 0


def test_anchor_answer_tokens_keeps_the_prompt_and_cuts_each_answer(tmp_path, tiny_model_dir):
    """data.replay.anchor_answer_tokens: the anchor sees each replay row's whole prompt and the first N tokens of
    its answer, exactly the uncut row's first tokens; train.json records the setting."""
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.replay import build_replay

    replay_file = tmp_path / "general.jsonl"
    rows = [{"prompt": f"Describe the colour number {i}.", "answer": " ".join(["blue and green"] * (i + 2))}
            for i in range(6)]
    replay_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    project = make_tiny_project(tmp_path, tiny_model_dir, train_rows=12, eval_rows=4)
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, dtype=torch.float32, device="cpu")

    def replay_examples(*extra):
        recipe = load_recipe(project, ["data.replay.source=general.jsonl", "data.replay.ratio=0.5",
                                       "data.max_length=512", *extra])
        return build_replay(recipe, create_run(recipe, tmp_path / "runs"), model, tokenizer, tiny_model_dir, 12)

    whole, cut = replay_examples(), replay_examples("data.replay.anchor_answer_tokens=3")  # the default: whole rows
    assert cut.report["anchor_answer_tokens"] == 3 and "anchor_answer_tokens" not in whole.report
    for full, short in zip(whole.examples, cut.examples, strict=True):
        answer_start = next(i for i, label in enumerate(full["labels"]) if label != -100)
        assert sum(label != -100 for label in full["labels"]) > 3
        assert short["input_ids"] == full["input_ids"][: answer_start + 3]
        assert sum(label != -100 for label in short["labels"]) == 3
    with pytest.raises(TunesmithError, match="anchor_answer_tokens"):
        load_recipe(project, ["data.replay.anchor_answer_tokens=0"])



def test_the_base_answering_replay_prompts_is_said_before_it_starts(tmp_path, tiny_model_dir, capsys):
    """For a model tunesmith ships no answers for, the base answers the replay prompts first: minutes on a CPU that
    a newcomer's log showed as seven silent minutes (the progress bar draws only on a terminal)."""
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.replay import build_replay

    (tmp_path / "general.jsonl").write_text("".join(json.dumps({"prompt": f"Name a colour, number {i}."}) + "\n"
                                                    for i in range(6)), encoding="utf-8")
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=12, eval_rows=4),
                         ["data.replay.source=general.jsonl", "data.replay.ratio=0.5", "data.replay.max_new_tokens=8",
                          "eval.batch_size=3"])
    model = load_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    build_replay(recipe, create_run(recipe, tmp_path / "runs"), model, load_tokenizer(tiny_model_dir),
                 tiny_model_dir, 12)
    said = capsys.readouterr().err
    first = said.index("replay: the base model answers 6 general prompts first (up to 8 tokens each, 3 at a time")
    assert first < said.index("general rows beside 12 training rows (6 answered by the base model: 6 now")
    capsys.readouterr()
    build_replay(recipe, create_run(recipe, tmp_path / "runs"), model, load_tokenizer(tiny_model_dir),
                 tiny_model_dir, 12)
    assert "answers 6 general prompts first" not in capsys.readouterr().err  # the cache has them now


def test_revision_plans_the_rest_from_the_steps_own_times():
    """9 steps after step 1 took 18 s: 2 s a step, so 95% of the 100 s left fit 47 more; with the replay anchor's
    base pass taking 9 of those seconds over the first-pass steps 2-10 (1 s each), the 10 first-pass steps still to
    come cost 3 s each."""
    from tunesmith.train.budget import revised_steps

    assert revised_steps(10, 18.0, 0.0, 100.0, 100, 0) == (10 + int(BUDGET_SAFETY * 100 / 2.0), 2.0)
    total, step_s = revised_steps(10, 27.0, 9.0, 100.0, 100, 20)
    assert step_s == 2.0 and total == 10 + 10 + int((BUDGET_SAFETY * 100 - 10 * 3.0) / 2.0)
    assert revised_steps(10, 0.9, 0.0, 1000.0, 10, 0)[0] == 30  # at most 3 epochs in all
    assert revised_steps(10, 90.0, 0.0, 0.0, 100, 0)[0] == 11  # nothing left: the step after this one


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "constant_with_warmup"])
def test_schedule_is_transformers_schedule_and_follows_a_revision(kind):
    from transformers.optimization import get_scheduler

    from tunesmith.train.budget import LearningRateSchedule

    weight = torch.nn.Parameter(torch.zeros(1))
    reference = get_scheduler(kind, torch.optim.SGD([weight], lr=1.0), num_warmup_steps=3, num_training_steps=20)
    schedule = LearningRateSchedule(kind, 3, 20)
    assert [schedule(step) for step in range(21)] == pytest.approx([reference.lr_lambdas[0](s) for s in range(21)])
    assert schedule(25) == pytest.approx(schedule(20))  # past the end it stays there (transformers' cosine rises)
    schedule.total_steps = 40  # revised at step 8: the decay now ends at step 40
    if kind in ("cosine", "linear"):
        assert schedule(8) > 0 and schedule(20) > 0.3 and schedule(40) == pytest.approx(0.0)
        assert schedule(39) < schedule(30) < schedule(20)


def test_time_budget_revises_a_plan_that_a_slow_measurement_cut_short(tmp_path, tiny_model_dir, monkeypatch,
                                                                      capfd):
    """The measurement before training says 30 s a step (a slow minute of a shared machine), so 300 s plan 9 steps;
    the steps' own times (well under a second) revise it at step 5 to the 3 epochs the budget allows, and the
    learning rate's decay ends at the revised last step."""
    import tunesmith.train.budget as budget

    monkeypatch.setattr(budget, "measure_step_seconds", lambda trainer, grad_accum: (30.0, 0.0))
    recipe = load_recipe(make_tiny_project(tmp_path, tiny_model_dir, train_rows=64, eval_rows=4),
                         ["training.max_steps=-1", "training.time_budget=5m", "training.logging_steps=1",
                          "training.save_steps=100000"])
    run = create_run(recipe, tmp_path / "runs")
    run_training(recipe, run)
    report = json.loads((run.path / "train.json").read_text())
    plan = report["time_budget"]
    first = plan["revisions"][0]
    assert first["at_step"] == budget.REVISE_AT and first["step_s"] < 30.0
    assert report["steps"] == plan["steps"] == 24 and plan["epochs"] == 3  # 8 steps an epoch
    assert "re-planned at step 5" in plan["why"] and report["chosen"]["steps"]["value"] == "24 (3 epochs)"
    assert json.loads((run.path / "budget.json").read_text())["steps"] == 24  # what a resume reads
    printed = capfd.readouterr().err
    assert "not the 30.0 s measured: 9 -> 24 steps" in printed and "24/24" in printed  # the bar follows
    rates = [m["learning_rate"] for m in run.read_metrics() if "learning_rate" in m]
    assert len(rates) == 24 and max(rates) == pytest.approx(recipe.training.lr)
    assert rates[-1] < 0.02 * recipe.training.lr  # decayed to the revised end, not cut at 9 steps' midpoint
    from tunesmith.train.budget import LearningRateSchedule

    revised = LearningRateSchedule("cosine", plan["warmup_steps"], 24)  # from the step after the revision on
    assert rates[5:] == pytest.approx([recipe.training.lr * revised(step) for step in range(5, 24)], rel=5e-3)
