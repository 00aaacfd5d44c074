"""Optimizer kernels, clipping and schedules against plain NumPy (and PyTorch's rules)."""
import math

import numpy as np
import pytest

from charlstm.training.config import TrainConfig
from charlstm.model.parameters import FlatParams
from charlstm.training.optim import (ADAGRAD_EPS, ADAM_BETAS, ADAM_EPS, RMSPROP_ALPHA, RMSPROP_EPS, Optimizer, clip_grad_norm, learning_rate)

SHAPES = {"a": (3, 4), "b": (5,)}


def reference_updates(name, p, grads, lr, momentum=0.0, weight_decay=0.0):
    """Plain float64 NumPy versions of torch.optim's update rules, with decoupled weight
    decay (torch.optim.AdamW's first line) before each."""
    p = p.astype(np.float64).copy()
    state = {"m": np.zeros_like(p), "v": np.zeros_like(p)}
    for step, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        p *= 1 - lr * weight_decay
        if name == "sgd":
            if momentum:
                state["m"] = momentum * state["m"] + g if step > 1 else g.copy()
                g = state["m"]
            p -= lr * g
        elif name == "adam":
            b1, b2 = ADAM_BETAS
            state["m"] = b1 * state["m"] + (1 - b1) * g
            state["v"] = b2 * state["v"] + (1 - b2) * g * g
            mhat = state["m"] / (1 - b1 ** step)
            vhat = state["v"] / (1 - b2 ** step)
            p -= lr * mhat / (np.sqrt(vhat) + ADAM_EPS)
        elif name == "rmsprop":
            state["v"] = RMSPROP_ALPHA * state["v"] + (1 - RMSPROP_ALPHA) * g * g
            p -= lr * g / (np.sqrt(state["v"]) + RMSPROP_EPS)
        else:
            state["v"] += g * g
            p -= lr * g / (np.sqrt(state["v"]) + ADAGRAD_EPS)
    return p


@pytest.mark.parametrize("name,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0),
                                           ("rmsprop", 0.0), ("adagrad", 0.0)])
def test_updates_match_the_reference(name, momentum):
    rng = np.random.default_rng(0)
    params = FlatParams(SHAPES, dtype=np.float64)
    params.flat[...] = rng.standard_normal(params.flat.size)
    start = params.flat.copy()
    grads_seq = [rng.standard_normal(params.flat.size) for _ in range(6)]
    opt = Optimizer(TrainConfig(optimizer=name, momentum=momentum), params)
    grads = params.zeros_like()
    for g in grads_seq:
        grads.flat[...] = g
        opt.update(grads, 0.01)
    np.testing.assert_allclose(params.flat, reference_updates(name, start, grads_seq, 0.01, momentum),
                               rtol=1e-12, atol=1e-14)
    assert opt.step == 6


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "adagrad"])
def test_decoupled_weight_decay_matches_the_reference(name):
    rng = np.random.default_rng(1)
    params = FlatParams(SHAPES, dtype=np.float64)
    params.flat[...] = rng.standard_normal(params.flat.size)
    start = params.flat.copy()
    grads_seq = [rng.standard_normal(params.flat.size) for _ in range(5)]
    opt = Optimizer(TrainConfig(optimizer=name, momentum=0.5 if name == "sgd" else 0.0,
                                weight_decay=0.3), params)
    grads = params.zeros_like()
    for g in grads_seq:
        grads.flat[...] = g
        opt.update(grads, 0.05)
    want = reference_updates(name, start, grads_seq, 0.05, 0.5 if name == "sgd" else 0.0, 0.3)
    np.testing.assert_allclose(params.flat, want, rtol=1e-12, atol=1e-14)
    # The decay is not the L2 penalty folded into the gradient: that gives other numbers.
    assert not np.allclose(want, reference_updates(name, start, grads_seq, 0.05))


def test_weight_decay_alone_shrinks_geometrically():
    params = FlatParams(SHAPES, dtype=np.float64)
    params.flat[...] = 2.0
    opt = Optimizer(TrainConfig(optimizer="sgd", weight_decay=0.5), params)
    zero = params.zeros_like()
    for _ in range(3):
        opt.update(zero, 0.1)
    np.testing.assert_allclose(params.flat, 2.0 * 0.95 ** 3, rtol=1e-15)


def test_adamw_as_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    params = FlatParams(SHAPES, dtype=np.float64)
    params.flat[...] = rng.standard_normal(params.flat.size)
    tp = torch.nn.Parameter(torch.from_numpy(params.flat.copy()))
    topt = torch.optim.AdamW([tp], lr=0.01, weight_decay=0.2)
    opt = Optimizer(TrainConfig(optimizer="adam", weight_decay=0.2), params)
    grads = params.zeros_like()
    for _ in range(6):
        g = rng.standard_normal(params.flat.size)
        grads.flat[...] = g
        opt.update(grads, 0.01)
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(params.flat, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_clipping_as_pytorch():
    grads = FlatParams(SHAPES, dtype=np.float32)
    grads.flat[...] = 1.0
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(math.sqrt(17))
    assert float(np.sqrt((grads.flat.astype(np.float64) ** 2).sum())) == pytest.approx(1.0, rel=1e-5)
    grads.flat[...] = 0.01
    clip_grad_norm(grads, 1.0)
    assert np.all(grads.flat == np.float32(0.01))  # below the limit: untouched
    grads.flat[...] = 3.0
    clip_grad_norm(grads, 0.0)
    assert np.all(grads.flat == 3.0)  # 0 disables


def test_schedules():
    c = TrainConfig(lr=1.0, lr_schedule="cosine", lr_min=0.1, warmup=4)
    assert learning_rate(c, 0, 100, 10) == pytest.approx(0.25 * 1.0)  # warmup ramp on the cosine value
    assert learning_rate(c, 50, 100, 10) == pytest.approx(0.55)
    assert learning_rate(c, 100, 100, 10) == pytest.approx(0.1)
    assert learning_rate(c, 500, 100, 10) == pytest.approx(0.1)
    s = TrainConfig(lr=1.0, lr_schedule="step", lr_decay=0.5)
    assert [learning_rate(s, k, 0, 10) for k in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    s2 = s.replace(lr_decay_every=3)
    assert learning_rate(s2, 6, 0, 10) == 0.25
    assert learning_rate(TrainConfig(lr=0.3), 12345, 0, 10) == 0.3
