"""A batch split into shards computed on parallel threads: the same loss, gradient and
carried state as the whole batch in one Network, reproducible, and resumable exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from charlstm.training.config import TrainConfig
from charlstm.kernels.blas import BLAS_THREADS
from charlstm.model.parameters import init_params
from charlstm.model.network import Network
from charlstm.model.shards import ShardedNetwork, default_threads, shard_bounds
from charlstm.training.loop import Trainer, prepare_data

from conftest import assert_resume_is_bit_identical, make_text, run_cli, tiny_config

V, H, T = 7, 5, 6


@pytest.mark.parametrize("batch,shards", [(4, 2), (5, 2), (7, 3), (3, 3), (32, 2)])
def test_shard_bounds_cover_the_batch_in_order(batch, shards):
    bounds = shard_bounds(batch, shards)
    assert len(bounds) == shards
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_default_threads_never_exceeds_the_batch():
    assert default_threads(1) == 1
    assert 1 <= default_threads(64) <= 64


def make_problem(cell, L, B, dtype, seed=0):
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L, batch_size=B, seq_len=T)
    params = init_params(config, V, np.random.default_rng(seed), dtype=np.float64).astype(dtype)
    rng = np.random.default_rng(seed + 1)
    inputs = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    state = {"h": rng.uniform(-0.9, 0.9, size=(L, B, H)).astype(dtype)}
    if cell == "lstm":
        state["c"] = rng.uniform(-1.5, 1.5, size=(L, B, H)).astype(dtype)
    return config, params, inputs, targets, state


def masks_for(L, B, dtype, p=0.4, seed=9):
    keep = np.random.default_rng(seed).random((L, T, B, H)) >= p
    return (keep / (1.0 - p)).astype(dtype)


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("shards,B", [(1, 4), (2, 4), (2, 5), (3, 7)])
@pytest.mark.parametrize("cell,L", [("lstm", 1), ("lstm", 2), ("rnn", 2), ("gru", 3)])
def test_sharded_step_equals_the_whole_batch_float64(cell, L, shards, B, dropout):
    config, params, inputs, targets, state = make_problem(cell, L, B, np.float64)
    masks = masks_for(L, B, np.float64) if dropout else None
    whole, split = Network(config, V, params), ShardedNetwork(config, V, params, shards)
    state_whole = {k: v.copy() for k, v in state.items()}
    state_split = {k: v.copy() for k, v in state.items()}
    # Two chunks in a row: the second starts from the state the first carried.
    for _ in range(2):
        a = whole.loss_and_grad(inputs, targets, state_whole, masks)
        b = split.loss_and_grad(inputs, targets, state_split, masks)
        assert b == pytest.approx(a, rel=1e-13)
        for name in params:
            np.testing.assert_allclose(split.grads[name], whole.grads[name], rtol=1e-11,
                                       atol=1e-14, err_msg=name)
        for key in state:
            np.testing.assert_allclose(state_split[key], state_whole[key], rtol=1e-13, atol=0)
    split.close()


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
def test_sharded_step_float32_is_reproducible_and_close(cell):
    config, params, inputs, targets, state = make_problem(cell, 2, 8, np.float32)
    whole = Network(config, V, params)
    a = whole.loss_and_grad(inputs, targets, {k: v.copy() for k, v in state.items()})
    runs = []
    for _ in range(2):
        split = ShardedNetwork(config, V, params, 2)
        loss = split.loss_and_grad(inputs, targets, {k: v.copy() for k, v in state.items()})
        runs.append((loss, split.grads.flat.copy()))
        split.close()
    assert runs[0][0] == runs[1][0] and np.array_equal(runs[0][1], runs[1][1])
    assert runs[0][0] == pytest.approx(a, rel=1e-5)
    np.testing.assert_allclose(runs[0][1], whole.grads.flat, rtol=1e-4, atol=1e-6)


def test_a_batch_smaller_than_the_shard_count_uses_one_row_each():
    config, params, inputs, targets, state = make_problem("lstm", 1, 2, np.float64)
    whole, split = Network(config, V, params), ShardedNetwork(config, V, params, 4)
    a = whole.loss_and_grad(inputs, targets, {k: v.copy() for k, v in state.items()})
    b = split.loss_and_grad(inputs, targets, {k: v.copy() for k, v in state.items()})
    assert b == pytest.approx(a, rel=1e-13)
    np.testing.assert_allclose(split.grads.flat, whole.grads.flat, rtol=1e-11, atol=1e-14)
    split.close()


@pytest.mark.skipif(not BLAS_THREADS.settable, reason="this BLAS's thread count cannot be set")
def test_the_blas_thread_count_is_restored_after_a_step_and_after_an_error():
    config, params, inputs, targets, state = make_problem("lstm", 1, 4, np.float32)
    split = ShardedNetwork(config, V, params, 2)
    before = BLAS_THREADS.get()
    split.loss_and_grad(inputs, targets, state)
    assert BLAS_THREADS.get() == before
    with pytest.raises(Exception):
        split.loss_and_grad(inputs, targets[:, :2], state)  # targets of the wrong length
    assert BLAS_THREADS.get() == before
    split.close()


@pytest.mark.skipif(not BLAS_THREADS.settable, reason="this BLAS's thread count cannot be set")
@pytest.mark.parametrize("threads,B,shards,blas", [(1, 4, 1, 1), (2, 4, 2, 1), (3, 7, 3, 1),
                                                   (2, 1, 1, 2), (4, 2, 2, 2)])
def test_threads_are_cores_shards_then_blas_threads(threads, B, shards, blas):
    """--threads N uses N cores: one shard per core while rows last, and the cores left
    over go to each shard's BLAS calls."""
    config, params, inputs, targets, state = make_problem("lstm", 1, B, np.float32)
    net = ShardedNetwork(config, V, params, threads)
    seen = []
    for shard in net.nets:
        def recording(*args, _run=shard.loss_and_grad, **kw):
            seen.append(BLAS_THREADS.get())
            return _run(*args, **kw)
        shard.loss_and_grad = recording
    net.loss_and_grad(inputs, targets, state)
    assert seen == [blas] * shards
    net.close()


def test_trainer_shards_when_asked_and_results_match_one_thread(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    losses = {}
    for threads in (1, 2):
        config = tiny_config(corpus, threads=threads, batch_size=6)
        trainer = Trainer(config, prepare_data(config))
        assert len(trainer.net.nets) == threads
        losses[threads] = [trainer.train_step()[0] for _ in range(5)]
    # float32 sums in another order: equal to rounding, not bit for bit.
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-4)


@pytest.mark.parametrize("cell,extra", [("lstm", {}), ("gru", {"dropout": 0.3})])
def test_resume_with_shards_is_bit_identical(tmp_path, cell, extra):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(800))
    assert_resume_is_bit_identical(
        tmp_path, tiny_config(corpus, cell=cell, threads=2, batch_size=5, **extra), n=30)


def test_threads_through_the_cli(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(4000))
    tiny = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "8", "--batch-size", "6",
            "--quiet"]
    run = tmp_path / "run"
    run_cli("train", corpus, *tiny, "--steps", "4", "--threads", "3", "--out", run)
    assert json.loads(run_cli("info", run, "--json").stdout)["config"]["threads"] == 3
    run_cli("resume", run, "--steps", "6", "--quiet")
    assert json.loads(run_cli("info", run, "--json").stdout)["config"]["threads"] == 3
    run_cli("resume", run, "--steps", "8", "--threads", "1", "--quiet")
    info = json.loads(run_cli("info", run, "--json").stdout)
    assert info["config"]["threads"] == 1 and info["step"] == 8
    default = tmp_path / "default"
    run_cli("train", corpus, *tiny, "--steps", "1", "--out", default)
    assert json.loads(run_cli("info", default, "--json").stdout)["config"]["threads"] == \
        default_threads(6)
    proc = run_cli("train", corpus, *tiny, "--threads", "0", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "--threads" in proc.stderr and "Traceback" not in proc.stderr
