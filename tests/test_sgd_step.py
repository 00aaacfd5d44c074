"""One SGD step, replayed by the NumPy reference from nothing but a saved checkpoint, the
corpus file and the batching rule documented in the README."""
import json
import math

import numpy as np
import pytest

from conftest import make_text, run_cli
from reference import reference_loss_and_grads


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_one_sgd_step_matches_the_reference(tmp_path, cell):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000, seed=2))
    run = tmp_path / "run"
    common = ["--quiet", "--save-every", "1000"]
    run_cli("train", corpus, "--cell", cell, "--hidden-size", "12", "--num-layers", "2",
            "--seq-len", "9", "--batch-size", "5", "--optimizer", "sgd", "--lr", "0.5",
            "--clip", "0.1", "--val-frac", "0.1", "--steps", "4", "--out", run, *common)
    before = dict(np.load(run / "last.npz", allow_pickle=False))
    run_cli("resume", run, "--steps", "5", *common)
    after = dict(np.load(run / "last.npz", allow_pickle=False))

    # The documented data layout, rebuilt independently of charlstm.
    hyper = json.loads(before["config"].item())["hyperparameters"]
    vocab = [chr(c) for c in before["vocab"]]  # code points (README, "Checkpoint format")
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in corpus.read_text()])
    n_val = math.floor(len(ids) * hyper["val_frac"])
    train_ids = ids[:len(ids) - n_val]
    B, T = hyper["batch_size"], hyper["seq_len"]
    L = len(train_ids) // B
    streams = train_ids[:B * L].reshape(B, L)
    k = int(before["epoch_step"])
    assert k == 4 and int(before["epoch"]) == 0
    inputs, targets = streams[:, k * T:(k + 1) * T], streams[:, k * T + 1:(k + 1) * T + 1]

    names = [n for n in before if n.startswith(("rnn.", "decoder."))]
    params = {n: before[n].astype(np.float64) for n in names}
    h0 = before["state.h"].astype(np.float64)
    c0 = before["state.c"].astype(np.float64) if cell == "lstm" else None
    loss, grads, _, _, hT, cT = reference_loss_and_grads(cell, params, inputs, targets, h0, c0)

    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    coef = min(1.0, hyper["clip"] / (norm + 1e-6))
    assert coef < 1.0  # the clip is exercised
    for n in names:
        expected = params[n] - hyper["lr"] * coef * grads[n]
        update = after[n].astype(np.float64) - params[n]
        np.testing.assert_allclose(after[n], expected, rtol=1e-5, atol=1e-6, err_msg=n)
        np.testing.assert_allclose(update, expected - params[n], rtol=2e-3, atol=2e-6, err_msg=n)
    np.testing.assert_allclose(after["state.h"], hT, rtol=1e-4, atol=1e-5)
    if cell == "lstm":
        np.testing.assert_allclose(after["state.c"], cT, rtol=1e-4, atol=1e-5)
    row = after["metrics"][-1]
    assert row[0] == 5
    assert row[2] == pytest.approx(loss / math.log(2), rel=1e-5)  # train bpc of the step
