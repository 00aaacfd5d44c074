"""Models leaving charlstm: safetensors (loaded into PyTorch's modules), ONNX (run by
onnx's reference evaluator and onnxruntime), an hf folder that `sample` reads back,
and TensorBoard events read back from their files."""
import json
import struct

import numpy as np
import pytest

from charlstm.model import checkpoint as ckpt_io
from charlstm.model.network import Network
from conftest import make_text, run_cli

pytest.importorskip("safetensors", reason="the export tests need pip install 'charlstm[safetensors]'")
TINY = ["--hidden-size", "8", "--num-layers", "2", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]
CELLS = ("lstm", "gru", "rnn", "peephole", "cifg")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    corpus = tmp / "c.txt"
    corpus.write_text(make_text(6000))
    for cell in CELLS:
        run_cli("train", corpus, "--cell", cell, *TINY, "--steps", "8", "--out", tmp / cell,
                "--tensorboard", "--log-every", "2")
    return tmp


def _charlstm_outputs(run_dir, seed=0):
    """charlstm's own logits [T, B, V] and final states for a random chunk and state."""
    ckpt = ckpt_io.load(run_dir / "last.npz")
    net = Network(ckpt.config, len(ckpt.vocab), ckpt.params)
    rng = np.random.default_rng(seed)
    B, T, L, H = 3, 7, 2, 8
    ids = rng.integers(0, len(ckpt.vocab), (B, T))
    state = {"h": rng.uniform(-0.5, 0.5, (L, B, H)).astype(np.float32)}
    if "c" in ckpt.state:
        state["c"] = rng.uniform(-0.5, 0.5, (L, B, H)).astype(np.float32)
    start = {k: v.copy() for k, v in state.items()}
    logits = net.forward(ids, state).logits.reshape(T, B, -1).copy()
    return ids, start, logits, state


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_safetensors_load_into_pytorch_and_give_the_same_logits(runs, tmp_path, cell):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    path = tmp_path / "m.safetensors"
    run_cli("export", runs / cell / "last.npz", "--format", "safetensors", "-o", path)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    model = torch.nn.Module()
    ids, start, logits, state = _charlstm_outputs(runs / cell)
    V = logits.shape[-1]
    model.rnn = module(V, 8, 2)
    model.decoder = torch.nn.Linear(8, V)
    model.load_state_dict(load_file(str(path)), strict=True)
    x = torch.nn.functional.one_hot(torch.from_numpy(ids.T), V).float()
    with torch.no_grad():
        if cell == "lstm":
            y, (h, c) = model.rnn(x, (torch.from_numpy(start["h"]), torch.from_numpy(start["c"])))
        else:
            y, h = model.rnn(x, torch.from_numpy(start["h"]))
        torch_logits = model.decoder(y).numpy()
    assert np.allclose(torch_logits, logits, atol=1e-5)
    assert np.allclose(h.numpy(), state["h"], atol=1e-5)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert json.loads(meta["config"])["cell"] == cell and meta["format"] == "charlstm"


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_runs_the_network_in_the_reference_evaluator_and_onnxruntime(runs, tmp_path, cell):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    path = tmp_path / "m.onnx"
    run_cli("export", runs / cell / "last.npz", "--format", "onnx", "-o", path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ids, start, logits, state = _charlstm_outputs(runs / cell)
    feeds = {"ids": ids.T.astype(np.int64), "h0": start["h"]}
    if "c" in start:
        feeds["c0"] = start["c"]
    runners = [ReferenceEvaluator(model).run]
    try:
        import onnxruntime

        runners.append(onnxruntime.InferenceSession(str(path)).run)
    except ImportError:
        pass
    for run in runners:
        outputs = run(None, feeds)
        assert np.allclose(outputs[0], logits, atol=1e-5)
        assert np.allclose(outputs[1], state["h"], atol=1e-5)
        if "c" in state:
            assert np.allclose(outputs[2], state["c"], atol=1e-5)


def test_an_hf_folder_holds_a_model_card_and_samples_like_its_run(runs, tmp_path):
    folder = tmp_path / "hf"
    run_cli("export", runs / "lstm", "--format", "hf", "-o", folder)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "vocab.json", "README.md"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: charlstm\npipeline_tag: text-generation\n")
    assert "bits per character" in card and "c.txt" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["cell"] == "lstm"
    from_folder = run_cli("sample", folder, "--length", "60", "--seed", "3")
    from_run = run_cli("sample", runs / "lstm", "--length", "60", "--seed", "3")
    assert from_folder.stdout == from_run.stdout
    assert "reading" in from_folder.stderr and "model.safetensors" in from_folder.stderr


def _events(directory):
    """(tag, step, value) of every scalar in the TensorBoard event files of ``directory``
    (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.append((value.tag, event.step, value.simple_value))
    return found


def test_tensorboard_events_hold_the_runs_metrics(runs, tmp_path):
    pytest.importorskip("tensorboardX")
    rows = [json.loads(line) for line in (runs / "gru" / "metrics.jsonl").read_text().splitlines()]
    live = _events(runs / "gru" / "tensorboard")
    assert ("hparam/best_val_bpc" in {t for t, s, v in live})  # for the HParams view
    train_points = {(s, round(v, 4)) for t, s, v in live if t == "bpc/train"}
    assert train_points == {(r["step"], round(r["train_bpc"], 4)) for r in rows}
    assert {s for t, s, v in live if t == "bpc/val"} == {r["step"] for r in rows if "val_bpc" in r}
    out = tmp_path / "tb"
    run_cli("export", runs / "gru", "--format", "tensorboard", "-o", out)
    exported = {(t, s, round(v, 4)) for t, s, v in _events(out) if not t.startswith("hparam")}
    assert exported == {(t, s, round(v, 4)) for t, s, v in live if not t.startswith("hparam")}
