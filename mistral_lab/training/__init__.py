"""Training: the shipped models' recipes and the run folders they write.

    train.py    TrainConfig, the loop (AdamW, warm-up, cosine, bf16 autocast), checkpoints, resume
    runs.py     run folders: refuse what is not ours, write the model and train_info.json
    probe.py    the retrieval probe's training (data/passkey.py's task)
"""
