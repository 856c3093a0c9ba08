"""The v0.1 chat format checked against Mistral's own encoder, and a guarded answer from
real Mistral-7B-Instruct-v0.1 weights when a GPU and the weights are at hand.

    mistral_common_ids(messages, GUARDRAIL_PROMPT) == encode_chat(tok, messages, GUARDRAIL_PROMPT)
"""
from __future__ import annotations

import os

import torch

from ..checkpoints import load
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


def guarded_answer(question: str, system_prompt: str, path: str | None = None, max_new_tokens: int = 128) -> str:
    """Answer with real Mistral-7B-Instruct-v0.1 weights (MISTRAL_INSTRUCT_PATH, a CUDA GPU),
    or say why it is skipped."""
    path = path or os.environ.get("MISTRAL_INSTRUCT_PATH")
    if not path:
        return ("skipped: set MISTRAL_INSTRUCT_PATH to a Mistral-7B-Instruct-v0.1 checkpoint directory "
                "(about 14.5 GB of bf16 weights) to see the guarded answer")
    if not torch.cuda.is_available():
        return f"skipped: MISTRAL_INSTRUCT_PATH={path} is set, but the 7B in bf16 needs a CUDA GPU"
    model = load(path, dtype=torch.bfloat16, device="cuda")
    tok = Tokenizer.mistral_v1()
    ids = encode_chat(tok, [{"role": "user", "content": question}], system_prompt=system_prompt)
    out = generate(model, ids, max_new_tokens, eos_id=tok.eos_id)
    return tok.decode(out.new_tokens)
