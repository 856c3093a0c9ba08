"""The v0.1 chat format checked against Mistral's own encoder, and a guarded answer from
the notebook's model when it is Mistral-7B-Instruct-v0.1 (any other says why not).

    mistral_common_ids(messages, GUARDRAIL_PROMPT) == encode_chat(tok, messages, GUARDRAIL_PROMPT)
"""
from __future__ import annotations

from ..generate import generate
from ..tokenizer import Tokenizer, encode_chat


def mistral_common_ids(messages: list[dict], system_prompt: str | None = None) -> list[int]:
    """The same conversation encoded by mistral-common's own v1 tokenizer (Mistral's reference)."""
    # lazy: mistral-common pulls in pydantic and more, needed only for this comparison
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kind = {"user": UserMessage, "assistant": AssistantMessage}
    msgs = ([SystemMessage(content=system_prompt)] if system_prompt else []) + \
        [kind[m["role"]](content=m["content"]) for m in messages]
    return MistralTokenizer.v1().encode_chat_completion(ChatCompletionRequest(messages=msgs)).tokens


def guarded_answer(model, tok: Tokenizer, question: str, system_prompt: str, *, name: str = "this model",
                   max_new_tokens: int = 128) -> str:
    """The model's answer to one guarded question, or one line saying why it would mean nothing.

    Only weights fine-tuned on the v0.1 chat format answer it (Mistral-7B-Instruct-v0.1): they
    share Mistral's 32,000-piece v1 vocabulary. Any other checkpoint -- the shipped Shakespeare
    model included -- never saw `[INST]`, so its continuation is not an answer."""
    v1 = Tokenizer.mistral_v1().vocab_size
    if model.args.vocab_size != v1 or tok.vocab_size != v1:
        return (f"skipped: {name} has a vocabulary of {model.args.vocab_size}, not the v1 tokenizer's {v1}: it was "
                f"not fine-tuned on this chat format. Run this notebook with model = a Mistral-7B-Instruct-v0.1 folder "
                f"(papermill -p model DIR, or MISTRAL_LAB_MODEL=DIR) to see the guarded answer")
    return continuation(model, tok, [{"role": "user", "content": question}], system_prompt, max_new_tokens)


def continuation(model, tok: Tokenizer, messages: list[dict], system_prompt: str | None = None,
                 max_new_tokens: int = 48) -> str:
    """The model's greedy continuation of a conversation in the chat format, encoded with the
    model's own tokenizer (to EOS or max_new_tokens): an answer from weights tuned on the
    format, more text of the same kind from any other."""
    ids = encode_chat(tok, messages, system_prompt=system_prompt)
    out = generate(model, ids, max_new_tokens, eos_id=tok.eos_id)
    return tok.decode(out.new_tokens)
