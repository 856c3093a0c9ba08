"""Data: the training corpus and the shipped assets, and the synthetic sequences that
teach and probe what a model does with its context.

    corpus.py    Shakespeare's works, the held-out split, the tokenizer, token streams
    assets.py    where the shipped files are (assets/), the held-out stream
    repeats.py   repeated spans written into training sequences (the copy mix)
    passkey.py   the retrieval task: a passkey d tokens before the question
"""
