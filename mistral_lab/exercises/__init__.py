"""Exercises with checkers: write a small function, check it against the package's own.

    from mistral_lab import exercises as ex

    def visible(q_pos, kv_pos, W):
        ...                               # your answer
    ex.check_visible(visible)             # ✓ all 11 cases pass   or
                                          # ✗ case 'key at distance W (q=5, kv=2, W=3)': expected False,
                                          #   got True — hint: ...

One exercise per notebook (the function a student writes, and what it is graded against):

    01  check_visible(fn)            fn(q_pos, kv_pos, W) -> bool          masks.visible
    01  check_keys_per_query(fn)     fn(p, W) -> int                       masks.keys_per_query
    02  check_receptive_field(fn)    fn(k, W) -> int                       masks.receptive_field
    03  check_rolling_slot(fn)       fn(position, W) -> (slot, evicted)    KVCache.write (evicted: None if empty)
    04  check_chunk_mask(fn)         fn(cache_pos, chunk_pos, W) -> mask   masks.mask_for
    05  check_kv_bytes(fn)           fn(args, bytes_per_element) -> int   ModelArgs.kv_bytes_per_token
    06  check_gqa_head(fn)           fn(h, n_heads, n_kv_heads) -> int     ops.attention (which V it returns)

Edge cases: W - 1 and W + 1, position 0, wraps of the buffer, a chunk longer than W,
no window (W = None), empty cache slots (-1). A check never raises at a student: it
returns a Result (truthy when passed; its repr is the message). For CI,
`check_x(fn, raise_on_fail=True)` raises AssertionError with the same message.

Reference solutions: course/solutions.py in the checkout (the teacher's folder, outside
the package and outside what scripts/lab shows); `course` builds the nbgrader course from
the notebooks and those solutions. Typical wrong answers and their hints: mistakes.py.

`question("03.slot")` shows a "predict, then run" question with the answer folded; the
answers are stored encoded in questions.py, never in a notebook's source.
"""
from __future__ import annotations

from .checkers import (check_chunk_mask, check_gqa_head, check_keys_per_query, check_kv_bytes,
                       check_receptive_field, check_rolling_slot, check_visible)
from .grading import Result
from .questions import question, question_html

__all__ = ["Result", "check_chunk_mask", "check_gqa_head", "check_keys_per_query", "check_kv_bytes",
           "check_receptive_field", "check_rolling_slot", "check_visible", "question", "question_html", "EXERCISES"]


EXERCISES = {  # name -> (checker, notebook)
    "visible": (check_visible, "01_sliding_window_masks"),
    "keys_per_query": (check_keys_per_query, "01_sliding_window_masks"),
    "receptive_field": (check_receptive_field, "02_receptive_field"),
    "rolling_slot": (check_rolling_slot, "03_rolling_buffer"),
    "chunk_mask": (check_chunk_mask, "04_prefill_and_chunking"),
    "kv_bytes_per_token": (check_kv_bytes, "05_memory_at_32k"),
    "gqa_kv_head": (check_gqa_head, "06_grouped_query_attention"),
}
