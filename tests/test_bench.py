"""The training benchmark's own pieces (the measurement itself runs in benchmarks/, not in the suite)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tunesmith.bench import dataset_files, markdown_table, ratios, reference_variant, spread_rows


def test_spread_rows_cover_short_to_long_and_are_reproducible():
    rows = spread_rows(24, seed=0)
    words = sorted(len(row["messages"][0]["content"].split()) for row in rows)
    assert words[0] < 50 and words[-1] > 900 and rows == spread_rows(24, seed=0)
    assert all(row["messages"][-1]["content"] == row["messages"][0]["content"].split()[-1] for row in rows)


def test_bundled_datasets_are_sliced(tmp_path):
    train, held = dataset_files("tickets", 16, tmp_path)
    assert len(train.read_text().splitlines()) == 16 and len(held.read_text().splitlines()) == 32
    assert "messages" in json.loads(train.read_text().splitlines()[0])


def test_ratios_and_table_name_failures():
    figures = {"trl-expert": {"failed": "exit code -9: killed", "seconds": 1, "model_flops": 0},
               "tunesmith": {"real_tokens_per_s": 200.0, "loss_tokens_per_s": 10.0, "peak_rss_mb": 4000.0,
                             "heldout_loss": 0.5, "seconds": 30.0, "mfu": 0.5}}
    assert ratios(figures)["tunesmith"]["real_tokens_per_s"] is None  # no reference: no ratio, not a crash
    figures["trl-expert"] = {**figures["tunesmith"], "real_tokens_per_s": 50.0, "peak_rss_mb": 16000.0}
    assert ratios(figures)["tunesmith"] == {"real_tokens_per_s": 4.0, "loss_tokens_per_s": 1.0,
                                            "peak_rss_mb": 0.25, "peak_cuda_mb": None, "heldout_loss": 1.0}
    figures["trl-plain"] = {"failed": "boom"}
    table = markdown_table({"datasets": {"tickets": {"variants": figures, "ratios_to_trl_expert": ratios(figures)}}})
    assert "| tickets | trl-plain | failed |" in table and "| tickets | tunesmith | 200.0 | 4.0 |" in table
    assert "peak RSS MB" in table and "| 4000 | 0.25 |" in table
    # on a GPU the memory compared is the CUDA allocator's peak, not the process's RSS
    figures["tunesmith"]["peak_cuda_mb"], figures["trl-expert"]["peak_cuda_mb"] = 3000.0, 6000.0
    table = markdown_table({"datasets": {"tickets": {"variants": figures, "ratios_to_trl_expert": ratios(figures)}}})
    assert "peak CUDA MB" in table and "| 3000 | 0.5 |" in table


def test_ratios_fall_back_to_the_fastest_micro_batched_expert_when_the_whole_batch_failed():
    run = {"loss_tokens_per_s": 1.0, "peak_rss_mb": 4000.0, "heldout_loss": 1.0, "seconds": 30.0, "mfu": 0.4}
    figures = {"trl-expert": {"failed": "exit code -9: killed"},
               "trl-expert-micro-2": {**run, "real_tokens_per_s": 60.0},
               "trl-expert-micro-1": {**run, "real_tokens_per_s": 80.0},
               "tunesmith": {**run, "real_tokens_per_s": 240.0, "peak_rss_mb": 2000.0}}
    assert reference_variant(figures) == "trl-expert-micro-1"
    assert ratios(figures)["tunesmith"]["real_tokens_per_s"] == 3.0
    assert ratios(figures)["tunesmith"]["peak_rss_mb"] == 0.5
    block = {"variants": figures, "reference": reference_variant(figures), "ratios_to_trl_expert": ratios(figures)}
    assert "spread: the ratios are to trl-expert-micro-1" in markdown_table({"datasets": {"spread": block}})
    figures["trl-expert-micro-1"] = {"failed": "exit code -9: killed"}
    assert reference_variant(figures) == "trl-expert-micro-2"
    figures["trl-expert"] = {**run, "real_tokens_per_s": 50.0}  # the whole batch ran: it is the reference
    assert reference_variant(figures) == "trl-expert"


def test_bench_cli_refuses_unknown_names():
    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["bench", "train", "--datasets", "tickets,imagenet"])
    assert result.exit_code != 0 and "unknown imagenet" in str(result.exception or result.output)


def test_bench_all_times_prepare_eval_and_export_for_real(tiny_model_dir):
    """The stages `bench all` adds to the training benchmark, run for real on a tiny model: the figures come from
    what each stage did (rows prepared, answers generated, a GGUF file written and read back by llama.cpp)."""
    from tunesmith.bench_all import markdown_table, pipeline_figures, prepare_throughput
    from tunesmith.export.verify import llama_cpp_available

    prepare = prepare_throughput(str(tiny_model_dir), 400)
    assert prepare["rows"] == 400 and prepare["prepare_rows_per_s"] > 0
    assert 0 < prepare["near_dedup_removed"] <= prepare["planted_near_duplicates"] + 5
    pipeline = pipeline_figures(str(tiny_model_dir), steps=2, eval_examples=4)
    for side in ("base", "tuned"):
        speed = pipeline["generation"][side]
        assert speed["answer_tokens"] > 0 and speed["tokens_per_s"] == round(
            speed["answer_tokens"] / speed["seconds_per_answer"], 1)
    gguf = pipeline["gguf"]
    assert gguf["bytes"] > 0 and gguf["seconds_per_gb"] > 0
    assert ("verify_seconds" in gguf) == llama_cpp_available()
    table = markdown_table({"prepare": prepare, "pipeline": pipeline})
    assert "| prepare | 400 rows" in table and "| eval | tuned:" in table and "GGUF F16" in table
