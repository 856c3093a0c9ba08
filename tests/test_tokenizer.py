"""Tokenizer, streaming detokenizer and v0.1 chat format, checked against mistral-common."""
import pytest

from mistral_lab.tokenizer import (
    GUARDRAIL_PROMPT, StreamDecoder, Tokenizer, encode_chat, format_chat_text,
)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.mistral_v1()


def reference_chat(messages, system_prompt=None):
    """mistral-common's own v1 instruct encoding (the ground truth for Mistral-7B-Instruct-v0.1)."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    cls = {"user": UserMessage, "assistant": AssistantMessage}
    msgs = ([SystemMessage(content=system_prompt)] if system_prompt else [])
    msgs += [cls[m["role"]](content=m["content"]) for m in messages]
    # v1() validates for serving (must end on a user turn); a finished conversation that
    # ends on an assistant turn is a fine-tuning example.
    mode = ValidationMode.finetuning if messages[-1]["role"] == "assistant" else ValidationMode.test
    ref = MistralTokenizer.from_file(Tokenizer.mistral_v1().model_file, mode=mode)
    return ref.encode_chat_completion(ChatCompletionRequest(messages=msgs)).tokens


# --- Tokenizer -------------------------------------------------------------------------

def test_golden_ids(tok):
    assert tok.encode("The cat sat on the mat") == [1, 415, 5255, 2495, 356, 272, 1610]
    assert tok.encode("The cat sat on the mat", bos=False, eos=True) == [415, 5255, 2495, 356, 272, 1610, 2]


def test_special_ids_and_vocab(tok):
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    assert tok.pieces([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]


@pytest.mark.parametrize("text", ["The cat sat on the mat", "héllo 🐱 猫 naïve\n\nend", "  two  spaces ", ""])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text, eos=True)) == text


def test_pieces_show_byte_fallback(tok):
    ids = tok.encode("a\n🐱", bos=False)
    assert tok.pieces(ids) == ["▁a", "<0x0A>", "<0xF0>", "<0x9F>", "<0x90>", "<0xB1>"]
    assert tok.id_to_piece(5255) == "▁cat"


def test_bad_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer model file not found: .*mistral_v1"):
        Tokenizer(tmp_path / "nope.model")
    junk = tmp_path / "junk.model"
    junk.write_text("not a model")
    with pytest.raises(ValueError, match="is not a sentencepiece model"):
        Tokenizer(junk)
    with pytest.raises(ValueError, match="is a directory"):
        Tokenizer(tmp_path)


def test_bad_ids_and_text(tok):
    with pytest.raises(ValueError, match=r"token id 40000 is outside the vocabulary \[0, 32000\)"):
        tok.decode([1, 40000])
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        tok.pieces([-1])
    with pytest.raises(TypeError, match="encode\\(\\) takes a str, got list"):
        tok.encode([1, 2])


# --- StreamDecoder ---------------------------------------------------------------------

STREAM_TEXTS = [
    "The cat sat on the mat",
    "Crème brûlée à la française, naïve café",
    "emoji 🐱🐶 then 👩‍👩‍👧 family and ✨",
    "中文字符与日本語の文字列",
    "lines\n\n  indented\n\tand tabs\n",
    " leading space",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_matches_decode(tok, text):
    ids = tok.encode(text, eos=True)
    stream = StreamDecoder(tok)
    pushes = [stream.push(i) for i in ids]
    assert "".join(pushes) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pushes)  # never shows half an emoji
    assert stream.flush() == ""
    # The window stays short: the context never reaches far back.
    assert stream.prefix_offset >= len(ids) - 8


def test_stream_holds_partial_character(tok):
    stream = StreamDecoder(tok)
    cat = tok.encode("🐱", bos=False)  # ▁ + 4 byte tokens
    assert tok.pieces(cat) == ["▁", "<0xF0>", "<0x9F>", "<0x90>", "<0xB1>"]
    # '▁' alone decodes to '' (the first space is stripped), then 3 bytes wait for the 4th.
    assert [stream.push(i) for i in cat] == ["", "", "", "", "🐱"]
    assert stream.push(28808) == "!"  # '!' without '▁': glued on, as in decode
    assert tok.decode(cat + [28808]) == "🐱!"


def test_stream_after_prompt_keeps_space(tok):
    # encode() adds the dummy '▁', so `new` starts with '▁But', as if generated after "ROMEO:".
    prompt, new = tok.encode("ROMEO:"), tok.encode("But soft, what light ✨", bos=False)
    stream = StreamDecoder(tok, prompt)
    out = "".join(stream.push(i) for i in new)
    assert out == " But soft, what light ✨"
    assert tok.decode(prompt) + out == tok.decode(prompt + new)
    # Without the prompt as context the first token would lose its space.
    assert tok.decode(new[:1]) == "But"


def test_stream_flush_and_eos_mid_text(tok):
    ids = tok.encode("a b", bos=False) + [2] + tok.encode("c", bos=False) + [243, 159]  # ends mid-emoji
    stream = StreamDecoder(tok)
    out = "".join(stream.push(i) for i in ids)
    assert out == "a b c"
    assert out + stream.flush() == tok.decode(ids) == "a b c\ufffd\ufffd"


def test_stream_random_ids(tok):
    # Random ids, heavy on raw bytes (lead and continuation bytes, so many invalid
    # sequences), '▁' and BOS/EOS: the invariant must hold for anything a model samples.
    import random

    rng = random.Random(0)
    for _ in range(100):
        prompt = [1] + [rng.randrange(259, 32000) for _ in range(rng.randint(0, 3))]
        ids = [rng.choice([rng.randrange(0, 3), rng.randrange(3, 259), rng.randrange(259, 32000), 28705,
                           rng.randrange(0xC0 + 3, 0xF5 + 3), rng.randrange(0x80 + 3, 0xC0 + 3)])
               for _ in range(rng.randint(1, 30))]
        for context in ([], prompt):
            stream = StreamDecoder(tok, context)
            out = "".join(stream.push(i) for i in ids) + stream.flush()
            assert tok.decode(context) + out == tok.decode(context + ids)


# --- chat format -----------------------------------------------------------------------

SINGLE = [{"role": "user", "content": "What is the capital of France?"}]
MULTI = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


def test_chat_single_turn(tok):
    ids = encode_chat(tok, SINGLE)
    assert ids == reference_chat(SINGLE)
    assert ids[:4] == [1, 733, 16289, 28793]  # <s> ▁[ INST ]: plain-text pieces in v1
    assert ids[-4:] == [733, 28748, 16289, 28793]  # ▁[ / INST ]
    assert format_chat_text(SINGLE) == "<s>[INST] What is the capital of France? [/INST]"


def test_chat_single_turn_guardrail(tok):
    ids = encode_chat(tok, SINGLE, system_prompt=GUARDRAIL_PROMPT)
    assert ids == reference_chat(SINGLE, GUARDRAIL_PROMPT)
    assert format_chat_text(SINGLE, GUARDRAIL_PROMPT) == (
        f"<s>[INST] {GUARDRAIL_PROMPT}\n\nWhat is the capital of France? [/INST]")


def test_chat_multi_turn(tok):
    ids = encode_chat(tok, MULTI)
    assert ids == reference_chat(MULTI)
    assert ids.count(1) == 1 and ids.count(2) == 1  # BOS once, EOS after the assistant turn
    assert format_chat_text(MULTI) == (
        "<s>[INST] Hi there [/INST]Hello! How can I help?</s>[INST] Tell me a joke. [/INST]")


def test_chat_multi_turn_system_goes_in_first_turn(tok):
    # mistral-common 1.13 (InstructTokenizerV1.encode_user_message, `if is_first and
    # system_prompt`) also puts the system prompt in the FIRST user turn, like the HF
    # template. (Older mistral-common releases put it in the last one.)
    ids = encode_chat(tok, MULTI, system_prompt="Be brief.")
    assert ids == reference_chat(MULTI, "Be brief.")
    text = format_chat_text(MULTI, "Be brief.")
    assert text.startswith("<s>[INST] Be brief.\n\nHi there [/INST]")
    assert text.count("Be brief.") == 1


def test_chat_ending_with_assistant(tok):
    msgs = MULTI[:2]
    assert encode_chat(tok, msgs) == reference_chat(msgs)
    assert encode_chat(tok, msgs)[-1] == 2


@pytest.mark.parametrize("messages, match", [
    ([], "messages is empty"),
    ([{"role": "assistant", "content": "hi"}], "first message must be from the user"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles must alternate"),
    ([{"role": "system", "content": "x"}], "unknown role 'system'.*system_prompt="),
    ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
    (["hello"], "must be a dict with 'role' and 'content'"),
])
def test_chat_bad_input(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        encode_chat(tok, messages)
    with pytest.raises(ValueError, match=match):
        format_chat_text(messages)
