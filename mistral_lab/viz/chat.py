"""Mistral 7B Instruct v0.1's chat format, token by token, checked against mistral-common.

    ids = encode_chat(tok, messages, system_prompt=GUARDRAIL_PROMPT)
    tokens_figure(tok, ids); mistral_common_ids(messages, GUARDRAIL_PROMPT) == ids
"""
from __future__ import annotations

import os

import plotly.graph_objects as go

from . import escape_label


def tokens_figure(tok, ids, title: str = "", per_row: int = 16) -> go.Figure:
    """The ids as a grid of boxes: the piece (with '▁' for a space) over its id; markers in red."""
    pieces = tok.pieces(ids)
    special = {"<s>", "</s>", "▁[", "INST", "]", "[/", "▁[/"}
    xs, ys, text, color = [], [], [], []
    for i, (t, p) in enumerate(zip(ids, pieces)):
        xs.append(i % per_row)
        ys.append(i // per_row)
        text.append(f"{escape_label(p)}<br><sub>{t}</sub>")
        color.append("#e06666" if p in special else "#9fc5e8")
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=text, textposition="middle center",
                               marker=dict(symbol="square", size=44, color=color), hoverinfo="skip"))
    rows = max(ys) + 1 if ys else 1
    fig.update_layout(title=title or f"{len(ids)} tokens", height=70 + 52 * rows, showlegend=False,
                      xaxis=dict(visible=False, range=[-0.6, per_row - 0.4]),
                      yaxis=dict(visible=False, autorange="reversed"), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def mistral_common_ids(messages: list[dict], system_prompt: str | None = None) -> list[int]:
    """The same conversation encoded by mistral-common's own v1 tokenizer (Mistral's reference)."""
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
    import torch

    path = path or os.environ.get("MISTRAL_INSTRUCT_PATH")
    if not path:
        return ("skipped: set MISTRAL_INSTRUCT_PATH to a Mistral-7B-Instruct-v0.1 checkpoint directory "
                "(about 14.5 GB of bf16 weights) to see the guarded answer")
    if not torch.cuda.is_available():
        return f"skipped: MISTRAL_INSTRUCT_PATH={path} is set, but the 7B in bf16 needs a CUDA GPU"
    import mistral_lab as ml
    from mistral_lab.tokenizer import encode_chat

    model = ml.load(path, dtype=torch.bfloat16, device="cuda")
    tok = ml.Tokenizer.mistral_v1()
    ids = encode_chat(tok, [{"role": "user", "content": question}], system_prompt=system_prompt)
    out = ml.generate(model, ids, max_new_tokens, eos_id=tok.eos_id)
    return tok.decode(out.new_tokens)
