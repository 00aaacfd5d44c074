"""The Kneser-Ney baseline against a plain dictionary version of the same formula (Chen &
Goodman 1999, eq. 17), whose distributions are checked to sum to one; and the command."""
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from charlstm.tools.baseline import kneser_ney_bits, max_exact_order
from conftest import make_text, run_cli


class PlainKneserNey:
    """Interpolated Kneser-Ney written out with dictionaries of tuples, for tests."""

    def __init__(self, ids, order, V, D):
        self.order, self.V, self.D = order, V, D
        ids = [int(i) for i in ids]
        self.counts = {}  # n -> Counter of n-gram tuples (raw at the top, continuation below)
        for n in range(1, order + 1):
            grams = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
            if n < order:
                before = defaultdict(set)
                for i in range(len(ids) - n + 1):
                    gram = tuple(ids[i:i + n])
                    before[gram].add(ids[i - 1] if i > 0 else None)
                # None: an n-gram at the very start, which had no predecessor, counts once
                grams = Counter({g: len(p - {None}) or 1 for g, p in before.items()})
            self.counts[n] = grams

    def prob(self, history, w):
        p = 1.0 / self.V
        for n in range(1, self.order + 1):
            if len(history) < n - 1:
                break
            h = tuple(history[len(history) - (n - 1):]) if n > 1 else ()
            grams = self.counts[n]
            total = sum(c for g, c in grams.items() if g[:-1] == h)
            if total == 0:
                continue
            types = sum(1 for g in grams if g[:-1] == h)
            p = (max(grams.get(h + (w,), 0) - self.D, 0) + self.D * types * p) / total
        return p


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_the_plain_formula_and_normalises(order):
    rng = np.random.default_rng(order)
    V = 5
    train = rng.integers(0, V, 400) if order != 4 else np.array([0, 1, 2, 0, 1, 3] * 60)
    evaluation = rng.integers(0, V, 60)
    plain = PlainKneserNey(train, order, V, 0.75)
    expected = -np.mean([math.log2(plain.prob(list(evaluation[max(0, j - order + 1):j]), evaluation[j]))
                         for j in range(1, len(evaluation))])
    assert kneser_ney_bits(train, evaluation, V, order) == pytest.approx(expected, rel=1e-12)
    for j in (3, 17, 40):  # every distribution sums to one
        history = list(evaluation[max(0, j - order + 1):j])
        assert sum(plain.prob(history, w) for w in range(V)) == pytest.approx(1.0, abs=1e-12)


def test_orders_beyond_exact_keys_are_refused():
    assert max_exact_order(65) == 10
    with pytest.raises(ValueError, match="order must be 1..10"):
        kneser_ney_bits(np.zeros(10, int), np.zeros(5, int), 65, 11)


def test_the_baseline_command_scores_the_split_train_validates_on(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20_000))
    proc = run_cli("baseline", corpus, "--order", "2", "--order", "5", "--json")
    report = json.loads(proc.stdout)
    assert report["train_chars"] == 18_000 and report["val_chars"] == 2_000
    two, five = (r["bpc"] for r in report["results"])
    assert 0 < five < two < math.log2(report["vocab_size"])  # more context, fewer bits
    text = run_cli("baseline", corpus, "--order", "5").stdout
    assert f"order  5  {five:.4f} bpc" in text
    bad = run_cli("baseline", corpus, "--order", "40", check=False)
    assert bad.returncode == 1 and "--order 40 is out of range" in bad.stderr
