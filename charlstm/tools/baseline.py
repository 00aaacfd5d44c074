"""A counting baseline: an interpolated Kneser-Ney character n-gram model.

`charlstm baseline CORPUS --order N` scores the same validation split a run of
``charlstm train`` validates on, so a user sees at once whether the network beats
counting. The model is interpolated Kneser-Ney with one absolute discount D for every
order (Kneser & Ney 1995, "Improved backing-off for m-gram language modeling"; the
interpolated form is that of Chen & Goodman 1999, "An empirical study of smoothing
techniques for language modeling", Computer Speech and Language 13, eq. 17):

    P_n(w | h) = max(c_n(h w) - D, 0) / c_n(h)  +  D * N1+(h .) / c_n(h) * P_{n-1}(w | h')

where h' is h without its oldest character, N1+(h .) the number of distinct characters
seen after h, and c_n(h) = sum over w of c_n(h w). At the highest order c_n counts
occurrences; below it, c_n(h w) is the continuation count N1+(. h w), the number of
distinct characters seen before h w. A context never seen passes P_{n-1} through
unchanged. Order 0 is uniform over the vocabulary, so every character of the
vocabulary gets a probability.

Counts come from sorted integer keys of the n-grams (exact while V**n fits in 63 bits,
which covers order 10 for a vocabulary of 65), so the whole model is a few NumPy sorts
and binary searches: seconds for a few megabytes of text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charlstm.errors import UserError

DEFAULT_DISCOUNT = 0.75


def max_exact_order(vocab_size: int) -> int:
    """The highest order whose n-grams have exact int64 keys: V**n < 2**63."""
    return max(1, int(63 / math.log2(max(vocab_size, 2))))


def _keys(ids: np.ndarray, n: int, V: int) -> np.ndarray:
    """Key of each n-gram of ``ids`` (len(ids) - n + 1 of them), base V, oldest first."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, np.int64)
    keys = np.zeros(count, np.int64)
    for k in range(n):
        keys = keys * V + ids[k:k + count].astype(np.int64)
    return keys


@dataclass
class _Level:
    """The counts of one order n: for each distinct n-gram key its (continuation) count,
    and for each distinct context key its total and its number of distinct successors."""
    grams: np.ndarray
    gram_counts: np.ndarray
    contexts: np.ndarray
    context_totals: np.ndarray
    context_types: np.ndarray


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[i] where sorted_keys[i] == query, else 0, for each query."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), values.dtype)
    at = np.searchsorted(sorted_keys, queries)
    at = np.minimum(at, len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == queries, values[at], 0)


def _level(ids: np.ndarray, n: int, V: int, highest: bool) -> _Level:
    grams_all = _keys(ids, n, V)
    if highest:
        grams, counts = np.unique(grams_all, return_counts=True)
    else:
        # Continuation counts: distinct (n+1)-grams, each counted once for its last n.
        longer = np.unique(_keys(ids, n + 1, V))
        grams, counts = np.unique(longer % (V ** n), return_counts=True)
        # An n-gram seen only at the very start of the text has no predecessor; it still
        # counts once, so that every n-gram seen has a count.
        seen = np.unique(grams_all)
        missing = np.setdiff1d(seen, grams, assume_unique=True)
        if len(missing):
            grams = np.concatenate([grams, missing])
            counts = np.concatenate([counts, np.ones(len(missing), counts.dtype)])
            order = np.argsort(grams)
            grams, counts = grams[order], counts[order]
    contexts_of = grams // V  # the n-1 oldest characters
    contexts, first = np.unique(contexts_of, return_index=True)
    totals = np.add.reduceat(counts, first) if len(counts) else counts
    types = np.diff(np.append(first, len(grams)))
    return _Level(grams, counts.astype(np.float64), contexts, totals.astype(np.float64),
                  types.astype(np.float64))


def kneser_ney_bits(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int, order: int,
                    discount: float = DEFAULT_DISCOUNT) -> float:
    """Mean bits per character of eval_ids[1:] under an interpolated Kneser-Ney model of
    ``order`` counted on ``train_ids`` (ids < ``vocab_size``); each prediction uses the
    preceding characters of eval_ids only (at most order-1 of them), as charlstm's
    validation reads its text as one stream from the start.

    Raises ValueError for an order above ``max_exact_order(vocab_size)``, a discount
    outside (0, 1), or fewer than two characters to score."""
    V = int(vocab_size)
    if not 1 <= order <= max_exact_order(V):
        raise ValueError(f"order must be 1..{max_exact_order(V)} for a vocabulary of {V}")
    if not 0 < discount < 1:
        raise ValueError("discount must be in (0, 1)")
    if len(eval_ids) < 2:
        raise ValueError("need at least two characters to evaluate")
    train_ids = np.asarray(train_ids, np.int64)
    eval_ids = np.asarray(eval_ids, np.int64)
    levels = [_level(train_ids, n, V, highest=(n == order)) for n in range(1, order + 1)]
    positions = np.arange(1, len(eval_ids))
    targets = eval_ids[positions]
    prob = np.full(len(positions), 1.0 / V)  # order 0: uniform
    for n, level in enumerate(levels, start=1):
        usable = positions >= n - 1  # enough history for a context of n-1 characters
        context = np.zeros(len(positions), np.int64)
        for k in range(n - 1):  # oldest first, as _keys builds them
            context = context * V + np.where(usable, eval_ids[np.maximum(positions - (n - 1) + k, 0)], 0)
        gram = context * V + targets
        total = _lookup(level.contexts, level.context_totals, context)
        types = _lookup(level.contexts, level.context_types, context)
        count = _lookup(level.grams, level.gram_counts, gram)
        seen = usable & (total > 0)
        safe_total = np.where(seen, total, 1.0)
        mixed = (np.maximum(count - discount, 0.0) + discount * types * prob) / safe_total
        prob = np.where(seen, mixed, prob)
    return float(-np.mean(np.log2(prob)))


def baseline_report(specs, orders, encoding: str = "utf-8", val_frac: float = 0.1,
                    val_chars: int = 200_000, discount: float = DEFAULT_DISCOUNT) -> dict:
    """`charlstm baseline`: the corpus of ``specs`` read and split as `charlstm train`
    reads and splits it (same vocabulary, validation split and --val-chars), and the
    validation bits per character of an interpolated Kneser-Ney model of each order.
    Raises UserError for unreadable input, an empty validation split, or an order the
    vocabulary cannot key exactly."""
    from charlstm.data.corpus import split
    from charlstm.data.tokens import load_corpus

    corpus = load_corpus(specs, encoding)
    train_ids, val_ids = split(corpus.ids, val_frac)
    if val_chars:
        val_ids = val_ids[:val_chars + 1]
    if len(val_ids) < 2:
        raise UserError(f"the validation split has {len(val_ids)} characters; raise --val-frac")
    V = len(corpus.vocab)
    top = max_exact_order(V)
    bad = [n for n in orders if not 1 <= n <= top]
    if bad:
        raise UserError(f"--order {bad[0]} is out of range: 1 to {top} for this vocabulary of {V}")
    results = [{"order": n, "bpc": kneser_ney_bits(train_ids, val_ids, V, n, discount)}
               for n in orders]
    return {"corpus": [f.path for f in corpus.files], "vocab_size": V,
            "train_chars": int(len(train_ids)), "val_chars": int(len(val_ids)),
            "discount": discount, "results": results}
