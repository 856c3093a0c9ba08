"""Benchmarks whose results are committed to benchmarks/, each written by files.write_result
(one schema: benchmark, date, commit, dirty, command, environment, then the results).

    python -m mistral_lab bench cpu-decode          decode tokens/s vs Hugging Face (cpu_decode.py)
    python -m mistral_lab bench throughput          tokens/s against batch, GQA vs MHA (throughput.py)
    python -m mistral_lab bench classroom           N students generating at once (classroom.py)
    python -m mistral_lab bench threads             the thread policy measured, idle and shared (thread_policy.py)
    python -m mistral_lab bench perplexity-memory   the perplexity CLI's peak memory (perplexity_memory.py)
    python -m mistral_lab bench serve               GPU: 7B decode at batch 1-8 (serve.py)
    python -m mistral_lab bench attention|decode    GPU: the kernels vs FlexAttention / SDPA (kernels.py)

fixtures.py holds what they run on: random-weight models, filled caches, the HF peer.
"""
