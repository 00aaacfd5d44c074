"""Checkpoints load into PyTorch unchanged and give the same loss; the cells PyTorch lacks
agree with their autograd twins (skipped without torch)."""
import json

import numpy as np
import pytest

from charlstm.training.config import TrainConfig
from charlstm.model.parameters import init_params
from charlstm.model.network import Network

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
def test_same_loss_and_gradients_as_pytorch(cell):
    V, H, L, B, T = 11, 8, 2, 3, 7
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L)
    params = init_params(config, V, np.random.default_rng(4), dtype=np.float64)
    rng = np.random.default_rng(5)
    inputs = rng.integers(V, size=(B, T))
    targets = rng.integers(V, size=(B, T))
    net = Network(config, V, params)
    state = net.zero_state(B)
    state["h"][...] = rng.standard_normal(state["h"].shape) * 0.5
    if cell == "lstm":
        state["c"][...] = rng.standard_normal(state["c"].shape) * 0.5
    h0 = torch.from_numpy(state["h"].copy()).requires_grad_(True)
    c0 = torch.from_numpy(state["c"].copy()).requires_grad_(True) if cell == "lstm" else None
    loss = net.loss_and_grad(inputs, targets, state)
    ws = net.workspace(T, B)

    module = {"lstm": torch.nn.LSTM, "rnn": torch.nn.RNN, "gru": torch.nn.GRU}[cell](V, H, L).double()
    decoder = torch.nn.Linear(H, V).double()
    module.load_state_dict({k[4:]: torch.from_numpy(v.copy()) for k, v in params.items() if k.startswith("rnn.")})
    decoder.load_state_dict({k[8:]: torch.from_numpy(v.copy()) for k, v in params.items() if k.startswith("decoder.")})
    x = torch.nn.functional.one_hot(torch.from_numpy(inputs.T), V).double()
    out, final = module(x, (h0, c0) if cell == "lstm" else h0)
    logits = decoder(out)
    t_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets.T.reshape(-1)))
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    named = {**{"rnn." + k: p for k, p in module.named_parameters()},
             **{"decoder." + k: p for k, p in decoder.named_parameters()}}
    assert set(named) == set(net.grads)
    for name, grad in net.grads.items():
        np.testing.assert_allclose(grad, named[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(ws.dh0, h0.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg="dh0")
    if cell == "lstm":
        np.testing.assert_allclose(ws.dc0, c0.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg="dc0")
    final_h = final[0] if cell == "lstm" else final
    np.testing.assert_allclose(state["h"], final_h.detach().numpy(), rtol=1e-12)


def test_readme_snippet_loads_a_checkpoint_into_torch(tmp_path, small_corpus):
    from conftest import run_cli
    run = tmp_path / "run"
    run_cli("train", small_corpus, "--hidden-size", "8", "--num-layers", "2", "--seq-len", "8",
            "--batch-size", "4", "--steps", "1", "--out", run, "--quiet")
    ck = np.load(run / "last.npz", allow_pickle=False)
    cfg = json.loads(ck["config"].item())["hyperparameters"]
    lstm = torch.nn.LSTM(len(ck["vocab"]), cfg["hidden_size"], cfg["num_layers"])
    lstm.load_state_dict({k[4:]: torch.from_numpy(ck[k]) for k in ck.files if k.startswith("rnn.")})
    decoder = torch.nn.Linear(cfg["hidden_size"], len(ck["vocab"]))
    decoder.load_state_dict({k[8:]: torch.from_numpy(ck[k]) for k in ck.files if k.startswith("decoder.")})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_benchmark_twin_weights_load_into_charlstm(tmp_path, cell):
    """`bench --quality --same-init` copies the PyTorch twin's initial weights into
    charlstm by name: every charlstm parameter gets one of the right shape."""
    from charlstm.tools.bench_torch import TorchTwin
    from charlstm.model.parameters import param_shapes

    from conftest import make_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    spec = dict(cell=cell, hidden_size=8, num_layers=2, seq_len=8, batch_size=2)
    twin = TorchTwin(spec, str(corpus), threads=1, seed=3)
    weights = twin.state_dict()
    shapes = param_shapes(TrainConfig(**spec), twin.V)
    assert {k: v.shape for k, v in weights.items()} == shapes
    again = TorchTwin(spec, str(corpus), threads=1, seed=3).state_dict()
    assert all(np.array_equal(weights[k], again[k]) for k in weights)


def test_benchmark_twin_trains_by_charlstm_schedule_and_dropout(tmp_path):
    """The PyTorch twin of `bench --quality` follows charlstm's learning-rate schedule
    (the rate of each step is optim.learning_rate's), drops out where charlstm does
    (training outputs vary with the draw) and validates without dropout (twice the same)."""
    from charlstm.tools.bench_torch import TorchTwin
    from charlstm.training.optim import learning_rate

    from conftest import make_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    spec = dict(cell="lstm", hidden_size=8, num_layers=2, seq_len=8, batch_size=2, lr=3e-3,
                lr_schedule="cosine", lr_min=1e-4, dropout=0.5, lr_horizon_time=10.0)
    twin = TorchTwin(spec, str(corpus), threads=1, seed=3)
    assert twin.module.dropout == 0.5 and twin.output_dropout.p == 0.5
    state, rates = twin.zero(twin.B), []
    for k, elapsed in enumerate([0.0, 5.0, 20.0]):
        state = twin.step(k, state, elapsed)
        rates.append(twin.opt.param_groups[0]["lr"])
        expected = learning_rate(twin.config, k, 0, twin.data.batches.steps_per_epoch, elapsed)
        assert rates[-1] == pytest.approx(expected)
    # The cosine's start, its midpoint at half the horizon, and its floor past it.
    assert rates == pytest.approx([3e-3, (3e-3 + 1e-4) / 2, 1e-4])
    assert twin.validate() == twin.validate()
    assert twin.module.training
    x = twin.eye[twin.streams[:, :8].T]
    first, _ = twin.module(x, twin.zero(twin.B))
    second, _ = twin.module(x, twin.zero(twin.B))
    assert not torch.equal(twin.output_dropout(first), twin.output_dropout(second))


# --------------------------------------------------------------------------------------
# The peephole and CIFG cells, which PyTorch does not have: written here with PyTorch
# tensors and differentiated by autograd, an implementation independent of both the
# kernels' hand-derived backward passes and of tests/reference.py.
# --------------------------------------------------------------------------------------
def torch_variant_layer(cell, x, p, k, h, c):
    """Layer k of ``cell`` over x [T, B, D] from (h, c) [B, H], as PyTorch ops; returns
    the outputs [T, B, H] and the final (h, c). ``p``: name -> tensor."""
    w_ih, w_hh = p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"]
    bias = p[f"rnn.bias_ih_l{k}"] + p[f"rnn.bias_hh_l{k}"]
    outputs = []
    for x_t in x:
        a = x_t @ w_ih.T + h @ w_hh.T + bias
        if cell == "peephole":  # Gers, Schraudolph & Schmidhuber 2002; gates i, f, g, o
            a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
            i = torch.sigmoid(a_i + p[f"rnn.weight_ci_l{k}"] * c)
            f = torch.sigmoid(a_f + p[f"rnn.weight_cf_l{k}"] * c)
            c = f * c + i * torch.tanh(a_g)
            o = torch.sigmoid(a_o + p[f"rnn.weight_co_l{k}"] * c)
        else:  # cifg, Greff et al. 2017; gates i, g, o and f = 1 - i
            a_i, a_g, a_o = a.chunk(3, dim=1)
            i = torch.sigmoid(a_i)
            c = (1 - i) * c + i * torch.tanh(a_g)
            o = torch.sigmoid(a_o)
        h = o * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


@pytest.mark.parametrize("cell", ["peephole", "cifg"])
def test_variant_cells_match_pytorch_autograd(cell):
    """Loss, every gradient (h0 and c0 included) and the carried state over a chunk, then
    one clipped Adam step: charlstm's against torch.optim.Adam on the autograd twin."""
    from charlstm.training.optim import Optimizer, clip_grad_norm

    V, H, L, B, T = 11, 8, 2, 3, 7
    config = TrainConfig(cell=cell, hidden_size=H, num_layers=L, clip=0.1)
    params = init_params(config, V, np.random.default_rng(14), dtype=np.float64)
    rng = np.random.default_rng(15)
    inputs = rng.integers(V, size=(B, T))
    targets = rng.integers(V, size=(B, T))
    net = Network(config, V, params)
    state = net.zero_state(B)
    state["h"][...] = rng.standard_normal(state["h"].shape) * 0.5
    state["c"][...] = rng.standard_normal(state["c"].shape) * 0.5
    h0 = torch.from_numpy(state["h"].copy()).requires_grad_(True)
    c0 = torch.from_numpy(state["c"].copy()).requires_grad_(True)
    named = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}

    loss = net.loss_and_grad(inputs, targets, state)
    ws = net.workspace(T, B)

    x = torch.nn.functional.one_hot(torch.from_numpy(inputs.T), V).double()
    final_h, final_c = [], []
    for k in range(L):
        x, h, c = torch_variant_layer(cell, x, named, k, h0[k], c0[k])
        final_h.append(h)
        final_c.append(c)
    logits = x @ named["decoder.weight"].T + named["decoder.bias"]
    t_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                               torch.from_numpy(targets.T.reshape(-1)))
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    assert set(named) == set(net.grads)
    for name, grad in net.grads.items():
        np.testing.assert_allclose(grad, named[name].grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(ws.dh0, h0.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg="dh0")
    np.testing.assert_allclose(ws.dc0, c0.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg="dc0")
    np.testing.assert_allclose(state["h"], torch.stack(final_h).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(state["c"], torch.stack(final_c).detach().numpy(), rtol=1e-12)

    # One training step: clip the global norm (about 0.2) to 0.1, then Adam.
    norm = clip_grad_norm(net.grads, config.clip)
    t_norm = torch.nn.utils.clip_grad_norm_(list(named.values()), config.clip)
    assert norm == pytest.approx(t_norm.item(), rel=1e-12) and norm > config.clip
    Optimizer(config, params).update(net.grads, config.lr)
    adam = torch.optim.Adam(list(named.values()), lr=config.lr)
    adam.step()
    for name, view in params.items():
        np.testing.assert_allclose(view, named[name].detach().numpy(), rtol=1e-12, atol=1e-15,
                                   err_msg=f"{name} after one step")


@pytest.mark.parametrize("cell", ["peephole", "cifg"])
def test_benchmark_twin_refuses_the_cells_pytorch_lacks(tmp_path, cell):
    from charlstm.tools.bench_torch import TorchTwin

    from conftest import make_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    spec = dict(cell=cell, hidden_size=8, num_layers=1, seq_len=8, batch_size=2)
    with pytest.raises(ValueError, match=f"PyTorch has no {cell} module"):
        TorchTwin(spec, str(corpus), threads=1)
