"""The training loop: exact resume, learning, checkpoint contents."""
import json
import math
import zipfile

import numpy as np
import pytest

from charlstm.model import checkpoint as ckpt_io
from charlstm.model.parameters import param_shapes
from charlstm.training.loop import Trainer, prepare_data

from conftest import assert_resume_is_bit_identical, make_text, tiny_config, train


@pytest.mark.parametrize("cell,optimizer,extra", [
    ("lstm", "adam", {}),
    ("rnn", "sgd", {"momentum": 0.9, "lr": 0.05}),
    ("lstm", "rmsprop", {"lr_schedule": "cosine", "lr_horizon": 40, "warmup": 5}),
    ("rnn", "adagrad", {"lr_schedule": "step", "lr_decay_every": 7}),
    ("lstm", "adam", {"dropout": 0.3, "weight_decay": 0.01}),
    ("gru", "sgd", {"dropout": 0.5, "weight_decay": 0.1, "lr": 0.05, "momentum": 0.5}),
])
def test_resume_is_bit_identical(tmp_path, cell, optimizer, extra):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(800))
    # 30 steps cross an epoch boundary (22 steps per epoch here)
    assert_resume_is_bit_identical(
        tmp_path, tiny_config(corpus, cell=cell, optimizer=optimizer, **extra), n=30)


def test_checkpoint_keys_and_safe_loading(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    config = tiny_config(corpus, steps=5)
    train(config, tmp_path / "run")
    path = tmp_path / "run" / "last.npz"
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        meta = json.loads(z["config"].item())
        vocab = z["vocab"]
        for name, shape in param_shapes(config, len(vocab)).items():
            assert z[name].shape == shape and z[name].dtype == np.float32
        assert z["state.h"].shape == z["state.c"].shape == (2, 4, 16)
        assert z["step"] == 5 and z["optim.step"] == 5
    assert meta["format_version"] == 2 and meta["hyperparameters"]["hidden_size"] == 16
    assert meta["corpus"][0]["path"] == str(corpus) and len(meta["corpus"][0]["sha256"]) == 64
    assert vocab.dtype == np.dtype("<u4") and [chr(c) for c in vocab] == sorted(set(make_text(3000)))
    expected = {"config", "vocab", "optim.step", "step", "epoch", "epoch_step", "state.h",
                "state.c", "rng", "metrics", "best_val_bpc", "elapsed"}
    assert expected <= keys
    assert {f"optim.exp_avg.{n}" for n in param_shapes(config, len(vocab))} <= keys
    # no object arrays anywhere: every member is a plain .npy without pickles
    with zipfile.ZipFile(path) as zf:
        assert all(n.endswith(".npy") for n in zf.namelist())
    # no temporary files are left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.npz", "last.npz", "metrics.jsonl"]


def test_metrics_jsonl_lines(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    train(tiny_config(corpus, steps=9, eval_every=4), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == [3, 4, 6, 8, 9]
    assert all({"step", "epoch", "train_bpc", "lr", "grad_norm", "chars_per_s", "elapsed"} <= set(r) for r in rows)
    assert [r["step"] for r in rows if "val_bpc" in r] == [4, 8, 9]


def test_steps_zero_writes_the_initial_checkpoint(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    config = tiny_config(corpus, steps=0, seed=3)
    train(config, tmp_path / "run")
    ckpt = ckpt_io.load(tmp_path / "run" / "last.npz")
    assert ckpt.step == 0
    again = Trainer(config, prepare_data(config))
    assert np.array_equal(ckpt.params.flat, again.net.params.flat)  # seeded, reproducible init
    bound = 1 / math.sqrt(16)
    assert np.abs(ckpt.params.flat).max() <= bound


def test_a_small_model_learns_far_below_unigram_entropy(tmp_path):
    text = make_text(20000, seed=1)
    corpus = tmp_path / "c.txt"
    corpus.write_text(text)
    counts = np.unique(list(text), return_counts=True)[1]
    p = counts / counts.sum()
    unigram_bits = float(-(p * np.log2(p)).sum())
    config = tiny_config(corpus, hidden_size=32, num_layers=1, seq_len=32, batch_size=16,
                         steps=300, lr=1e-2, eval_every=300)
    trainer = train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final_train = np.mean([r["train_bpc"] for r in rows[-5:]])
    assert final_train < 0.6 * unigram_bits, (final_train, unigram_bits)
    assert trainer.best_val_bpc < 0.6 * unigram_bits
