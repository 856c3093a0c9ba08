"""Notebook 07's CPU timing of the window against full attention, and notebook 08's guarded
answer from the model it is given."""
from __future__ import annotations

import pytest
import torch

import mistral_lab as ml
from mistral_lab.bench.fixtures import random_model
from mistral_lab.experiments import chat, speed
from mistral_lab.tokenizer import GUARDRAIL_PROMPT

SMALL = ml.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2, vocab_size=64,
                     sliding_window=8, max_seq_len=128)


def test_full_attention_copy_is_the_same_weights_without_a_window():
    model = random_model(SMALL, seed=1)
    full = speed.full_attention_copy(model)
    assert full.args.sliding_window is None and full.args.replace(sliding_window=8) == model.args
    ids = torch.randint(0, SMALL.vocab_size, (1, 8))
    with torch.inference_mode():  # within one window both compute the same thing
        torch.testing.assert_close(full(ids), model(ids))
        longer = torch.randint(0, SMALL.vocab_size, (1, 24))
        assert not torch.allclose(full(longer)[0, -1], model(longer)[0, -1])


def test_window_vs_full_counts_the_pairs_each_visits():
    model = random_model(SMALL, seed=1)
    r = speed.window_vs_full(model, torch.randint(0, SMALL.vocab_size, (32,)), [8, 32], repeats=1)
    assert r["window"] == 8 and r["lengths"] == [8, 32]
    assert r["window_pairs"] == [ml.visible_pairs(8, 8), ml.visible_pairs(32, 8)]
    assert r["full_pairs"] == [36, 32 * 33 // 2]
    assert all(t > 0 for t in r["window_s"] + r["full_s"])
    with pytest.raises(ValueError, match="no window"):
        speed.window_vs_full(speed.full_attention_copy(model), [1, 2, 3], [2])


def test_guarded_answer_only_from_weights_with_the_v1_vocabulary():
    v1 = ml.Tokenizer.mistral_v1()
    other = random_model(SMALL)
    said = chat.guarded_answer(other, v1, "How do I kill a Linux process?", GUARDRAIL_PROMPT, name="a small model")
    assert said.startswith("skipped: a small model has a vocabulary of 64") and "\n" not in said
    instruct_shaped = random_model(SMALL.replace(vocab_size=v1.vocab_size), seed=2)
    answer = chat.guarded_answer(instruct_shaped, v1, "How do I kill a Linux process?", GUARDRAIL_PROMPT,
                                 max_new_tokens=4)
    assert isinstance(answer, str) and not answer.startswith("skipped")
