"""Summed log-probabilities of many sequences (perplexity, preference and probe scoring): batched by a token budget,
longest first, and returned in the order given, each as it scores alone."""

from __future__ import annotations

import pytest
import torch

from tunesmith.eval.decoding import encode_document, sequence_logprobs, token_batches


def test_token_batches_keep_under_the_row_and_token_caps():
    lengths = [900, 700, 300, 300, 200, 100, 100, 50]
    batches = token_batches(lengths, max_rows=3, max_tokens=1000)
    assert batches == [[0], [1], [2, 3, 4], [5, 6, 7]]
    assert all(len(batch) * lengths[batch[0]] <= 1000 for batch in batches)
    assert token_batches([5000, 10], max_rows=8, max_tokens=1000) == [[0], [1]]  # too long alone: a batch of one


def test_batched_scores_are_each_sequences_own_in_the_order_given(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    texts = ["Two red mugs, size M.", "A blue scarf " * 12, "One lamp.", "Three green cups and a plate " * 6]
    encoded = [encode_document(tokenizer, text, 256) for text in texts]
    with torch.no_grad():
        batched = sequence_logprobs(model, encoded, tokenizer.pad_token_id, batch_size=4)
        alone = [sequence_logprobs(model, [one], tokenizer.pad_token_id, batch_size=1)[0] for one in encoded]
    assert [count for _, count in batched] == [len(e["input_ids"]) - 1 for e in encoded]
    assert [total for total, _ in batched] == pytest.approx([total for total, _ in alone], rel=1e-4)


def test_a_long_document_is_scored_whole_in_windows_not_cut_at_max_length(tiny_model_dir):
    """CPT's held-out perplexity scored each document's first max_length tokens only: of a 5,000-token document at
    1,024, four fifths went unscored."""
    from transformers import AutoTokenizer

    from tunesmith.eval.decoding import document_windows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "The kiln cools slowly overnight. " * 40
    whole = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    windows = document_windows(tokenizer, text, 64)
    assert len(whole) > 3 * 64 and [len(w["input_ids"]) for w in windows[:-1]] == [64] * (len(windows) - 1)
    assert [token for w in windows for token in w["input_ids"]] == whole  # every token, in order, once
    assert encode_document(tokenizer, text, 64) == windows[0]
