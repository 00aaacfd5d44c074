"""Checkpoints load into PyTorch unchanged and give the same loss (skipped without torch)."""
import json

import numpy as np
import pytest

from charlstm.config import TrainConfig
from charlstm.parameters import init_params
from charlstm.network import Network

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
    from charlstm.bench_torch import TorchTwin
    from charlstm.parameters import param_shapes

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
