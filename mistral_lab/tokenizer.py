"""Text <-> token ids: Mistral 7B v0.1's sentencepiece tokenizer, streaming, and chat format.

Mistral 7B v0.1 uses a sentencepiece BPE model (the same family as Llama's):
  - 32000 pieces. Ids 0, 1, 2 are <unk>, <s> (BOS) and </s> (EOS).
  - byte fallback: ids 3..258 are the 256 bytes <0x00>..<0xFF>. A character with
    no piece of its own (most emoji, rare CJK) is spelled as its UTF-8 bytes, so
    nothing is ever <unk>, but one character can span several tokens.
  - "▁" (U+2581) stands for a space, and encoding adds one at the very start of
    the text (the "dummy prefix"), so "cat" alone and " cat" after "The" are the
    same token; decoding drops that first "▁" again.
The file ships inside the Apache-2.0 package mistral-common (data/tokenizer.model.v1),
so no download is needed:

    tok = Tokenizer.mistral_v1()
    tok.encode("The cat sat on the mat")  # [1, 415, 5255, 2495, 356, 272, 1610]
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import sentencepiece as spm

from .files import shown_path
from .tokens import id_list

# The guardrail system prompt of the Mistral 7B paper (section 5).
GUARDRAIL_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. "
    "Ensure replies promote fairness and positivity."
)


class Tokenizer:
    """A sentencepiece model, with the checks a learner needs when something is off."""

    def __init__(self, model_file: str | Path):
        path = Path(model_file)
        if not path.exists():
            raise FileNotFoundError(
                f"tokenizer model file not found: {path}; pass the path to a sentencepiece "
                f".model file, or use Tokenizer.mistral_v1() for Mistral 7B v0.1's tokenizer")
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file (a pipe, socket or device)"
            raise ValueError(f"{path} is {kind}: pass a sentencepiece .model file")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:  # sentencepiece reports a bad file as RuntimeError
            raise ValueError(f"{path} is not a sentencepiece model ({str(e).splitlines()[0]})") from None
        self.model_file = path

    @classmethod
    def mistral_v1(cls) -> "Tokenizer":
        """Mistral 7B v0.1's own tokenizer, read from the installed mistral-common package."""
        spec = importlib.util.find_spec("mistral_common")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                "Mistral's v1 tokenizer ships in the mistral-common package, which is not "
                "installed: pip install mistral-common")
        # Locate the package folder without importing it (importing pulls in pydantic etc.).
        return cls(Path(spec.origin).parent / "data" / "tokenizer.model.v1")

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Text -> ids. BOS is on by default: the model was trained with it on every sequence."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}; decode ids with decode()")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: bytes that were not UTF-8 (a Latin-1 argv, a file)
            c = text[e.start]
            what = (f"came from the byte {c.encode('utf-8', 'surrogateescape')!r}" if "\udc80" <= c <= "\udcff"
                    else f"is a lone surrogate U+{ord(c):04X}")
            raise ValueError(f"the text is not valid UTF-8: character {e.start} {what}; re-encode the "
                             f"text as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        return [self.bos_id] * bos + self.sp.encode(text) + [self.eos_id] * eos

    def _check(self, ids) -> list[int]:
        ids = id_list(ids)  # lists, tuples, 1-D tensors and arrays of integers; never a float or bool cast
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size}): "
                                 "check the ids come from this tokenizer (and a model of the same vocab)")
        return ids

    def decode(self, ids) -> str:
        """Ids -> text. BOS/EOS decode to nothing; byte-fallback tokens are reassembled to UTF-8."""
        return self.sp.decode(self._check(ids))

    def id_to_piece(self, i: int) -> str:
        """The piece as stored in the vocabulary, e.g. '▁cat', '<0x0A>', '<s>'."""
        return self.sp.id_to_piece(self._check([i])[0])

    def pieces(self, ids) -> list[str]:
        """One string per token, for display: shows '▁' and byte pieces like '<0x0A>' as they are,
        which makes visible what decode() hides (spaces, bytes of a split character)."""
        return [self.sp.id_to_piece(i) for i in self._check(ids)]

    def __repr__(self) -> str:
        return f"Tokenizer({shown_path(self.model_file)!r}, vocab_size={self.vocab_size})"


class StreamDecoder:
    """Turns tokens into text one at a time, for printing while generating.

    Decoding each token on its own is wrong twice over: it drops the leading space
    of '▁cat' (sentencepiece strips the first '▁' of whatever it decodes), and a
    byte-fallback token like <0xF0> is a quarter of an emoji, not text. Decoding
    the whole history every step is right but O(n) per token.

    So, as text-generation-inference and vLLM do, keep two offsets into the ids:
        ids[prefix_offset:read_offset]  the last tokens already emitted: context only
        ids[read_offset:]               tokens not emitted yet
    Each push decodes the short window ids[prefix_offset:] and emits what it adds to
    the decoded context. The context absorbs the leading-space strip (both decodes
    strip the same '▁'), and while the window text ends in U+FFFD (an incomplete
    UTF-8 sequence) we emit nothing and wait for the remaining bytes.

    Invariant: "".join(pushes) + flush() == tokenizer.decode(all pushed ids), and the
    pushes alone already equal it unless the ids end mid-character.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids=None):
        """prompt_ids: tokens whose text is already shown (the prompt), so the first new
        token keeps its leading space. Only the tail of the ids is ever re-decoded."""
        self.tok = tokenizer
        self.ids: list[int] = tokenizer._check([] if prompt_ids is None else prompt_ids)
        # The whole prompt is context for the first push; after it the window is short.
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly '')."""
        self.ids.extend(self.tok._check([token_id]))
        context = self.tok.sp.decode(self.ids[self.prefix_offset:self.read_offset])
        text = self.tok.sp.decode(self.ids[self.prefix_offset:])
        # Emit only when the window adds text and does not end mid-character. A token
        # that adds nothing (BOS/EOS) leaves the offsets alone, so the context always
        # contains a text token and the next '▁' is never mistaken for the first one.
        if len(text) > len(context) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(context):]
        return ""

    def flush(self) -> str:
        """Text still held back at the end (bytes that never completed a character)."""
        context = self.tok.sp.decode(self.ids[self.prefix_offset:self.read_offset])
        text = self.tok.sp.decode(self.ids[self.prefix_offset:])
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(context):]


# ---------------------------------------------------------------------------------------
# Chat format of Mistral-7B-Instruct-v0.1:
#     <s>[INST] {user} [/INST]{assistant}</s>[INST] {user} [/INST]
# "[INST]" is plain text here (three pieces '▁[', 'INST', ']'), not a special token, and
# each turn is tokenized on its own, so each starts with sentencepiece's dummy '▁': the
# model sees '▁[INST]' after </s> and '▁Hello' after [/INST]. BOS appears once; EOS ends
# every assistant turn, which is how the model learned to stop.

def _check_messages(messages: list[dict]) -> None:
    if not messages:
        raise ValueError("messages is empty: pass at least one {'role': 'user', 'content': ...}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {k} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ("user", "assistant"):
            hint = " (v0.1 has no system role: pass system_prompt=...)" if m["role"] == "system" else ""
            raise ValueError(f"message {k} has unknown role {m['role']!r}: expected 'user' or 'assistant'{hint}")
        if not isinstance(m["content"], str):
            raise TypeError(f"message {k} content must be a str, got {type(m['content']).__name__}")
        expected = "user" if k % 2 == 0 else "assistant"
        if m["role"] != expected:
            where = "the first message must be from the user" if k == 0 else "roles must alternate user/assistant"
            raise ValueError(f"message {k} has role {m['role']!r} but {where}")


def _turns(messages: list[dict], system_prompt: str | None):
    """Yield (role, text) with the system prompt merged into the FIRST user turn, as the
    Hugging Face template and mistral-common's v1 tokenizer both do (v0.1 has no system role)."""
    _check_messages(messages)
    for k, m in enumerate(messages):
        if m["role"] == "user":
            content = f"{system_prompt}\n\n{m['content']}" if (k == 0 and system_prompt) else m["content"]
            yield "user", f"[INST] {content} [/INST]"
        else:
            yield "assistant", m["content"]


def encode_chat(tokenizer: Tokenizer, messages: list[dict], system_prompt: str | None = None) -> list[int]:
    """Ids for a conversation: [{'role': 'user'|'assistant', 'content': str}, ...], alternating,
    user first. Ending on a user turn gives a prompt for generating the next reply.
    Matches mistral-common's MistralTokenizer.v1().encode_chat_completion token for token."""
    ids = [tokenizer.bos_id]
    for role, text in _turns(messages, system_prompt):
        ids += tokenizer.encode(text, bos=False, eos=(role == "assistant"))
    return ids


def format_chat_text(messages: list[dict], system_prompt: str | None = None) -> str:
    """The same conversation as a readable string with <s>/</s> markers (for notebooks).
    Tokenizing it in one go is NOT encode_chat: see the note above about the '▁'s."""
    out = "<s>"
    for role, text in _turns(messages, system_prompt):
        out += text + ("</s>" if role == "assistant" else "")
    return out
