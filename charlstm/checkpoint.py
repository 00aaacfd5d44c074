"""Checkpoints: plain .npz files, written atomically, read without unpickling.

Every key is documented in the README ("Checkpoint format"). Parameters keep PyTorch's
state_dict names, so ``{k: torch.from_numpy(v)}`` of them loads into ``nn.LSTM``.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import CHECKPOINT_FORMAT, __version__
from .config import TrainConfig
from .corpus import CorpusFile, Vocab
from .errors import CheckpointError
from .model import FlatParams, param_shapes
from .optim import STATISTICS

METRIC_COLUMNS = ("step", "epoch", "train_bpc", "val_bpc", "lr", "grad_norm", "chars_per_s", "elapsed")


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped."""

    config: TrainConfig
    corpus_files: list  # of CorpusFile
    vocab: Vocab
    params: FlatParams
    optim_step: int
    optim_state: dict  # statistic name -> FlatParams
    step: int  # optimizer steps taken so far
    epoch: int  # completed epochs
    epoch_step: int  # steps taken in the current epoch: the data position
    state: dict  # 'h' (and 'c' for the LSTM): [num_layers, batch_size, hidden_size]
    rng_state: dict  # numpy bit generator state
    metrics: np.ndarray = field(default_factory=lambda: np.zeros((0, len(METRIC_COLUMNS))))
    best_val_bpc: float = float("nan")
    elapsed: float = 0.0  # training seconds over all invocations

    def meta_json(self) -> str:
        return json.dumps({
            "format_version": CHECKPOINT_FORMAT,
            "charlstm_version": __version__,
            "hyperparameters": self.config.to_json_dict(),
            "corpus": [{"path": f.path, "sha256": f.sha256} for f in self.corpus_files],
        }, sort_keys=True)


def to_arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    arrays = {
        "config": np.array(ckpt.meta_json()),
        "vocab": ckpt.vocab.as_array(),
    }
    for name, view in ckpt.params.items():
        arrays[name] = view
    arrays["optim.step"] = np.array(ckpt.optim_step, dtype=np.int64)
    for stat, values in ckpt.optim_state.items():
        for name, view in values.items():
            arrays[f"optim.{stat}.{name}"] = view
    arrays["step"] = np.array(ckpt.step, dtype=np.int64)
    arrays["epoch"] = np.array(ckpt.epoch, dtype=np.int64)
    arrays["epoch_step"] = np.array(ckpt.epoch_step, dtype=np.int64)
    for key, value in ckpt.state.items():
        arrays[f"state.{key}"] = value
    arrays["rng"] = np.array(json.dumps(ckpt.rng_state))
    arrays["metrics"] = np.asarray(ckpt.metrics, dtype=np.float64).reshape(-1, len(METRIC_COLUMNS))
    arrays["best_val_bpc"] = np.array(ckpt.best_val_bpc, dtype=np.float64)
    arrays["elapsed"] = np.array(ckpt.elapsed, dtype=np.float64)
    return arrays


def save(ckpt: Checkpoint, path) -> None:
    """Write ``ckpt`` to ``path`` atomically: a temporary file in the same directory,
    flushed to disk, then renamed over the target. A crash at any moment leaves either
    the old file or the new one, never a mix."""
    path = Path(path)
    arrays = to_arrays(ckpt)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(
                f"could not write {path}: {e.strerror or e}; the previous checkpoint is kept") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _scalar(arrays, key, kind):
    a = arrays[key]
    if a.shape != () or a.dtype.kind not in kind:
        raise CheckpointError(f"checkpoint key {key!r} has the wrong shape or dtype")
    return a.item()


def load(path) -> Checkpoint:
    """Read and validate a checkpoint; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable charlstm checkpoint ({e})") from None
    try:
        return from_arrays(arrays)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def from_arrays(arrays: dict[str, np.ndarray]) -> Checkpoint:
    def need(key):
        if key not in arrays:
            raise CheckpointError(f"checkpoint lacks the key {key!r}")
        return arrays[key]

    meta_raw = need("config")
    if meta_raw.shape != () or meta_raw.dtype.kind != "U":
        raise CheckpointError("checkpoint key 'config' is not a JSON string")
    try:
        meta = json.loads(meta_raw.item())
        if meta.get("format_version") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint format {meta.get('format_version')!r} is not supported "
                f"(this charlstm reads format {CHECKPOINT_FORMAT})")
        config = TrainConfig.from_json_dict(meta["hyperparameters"])
        corpus_files = [CorpusFile(f["path"], f["sha256"]) for f in meta["corpus"]]
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint configuration is unreadable ({e})") from None

    vocab_arr = need("vocab")
    if vocab_arr.ndim != 1 or vocab_arr.dtype != np.dtype("<U1") or len(vocab_arr) == 0:
        raise CheckpointError("checkpoint key 'vocab' must be a 1-D array of characters")
    vocab = Vocab(str(c) for c in vocab_arr)
    if len(set(vocab.chars)) != len(vocab.chars):
        raise CheckpointError("checkpoint vocabulary has repeated characters")

    shapes = param_shapes(config, len(vocab))
    params = FlatParams(shapes, dtype=np.float32)
    for name, shape in shapes.items():
        _fill(params[name], need(name), name)

    optim_state = {}
    for stat in STATISTICS[config.optimizer]:
        values = params.zeros_like()
        for name in shapes:
            key = f"optim.{stat}.{name}"
            if key in arrays:
                _fill(values[name], arrays[key], key)
            elif not (stat == "momentum_buffer"):
                need(key)
        optim_state[stat] = values

    L, B, H = config.num_layers, config.batch_size, config.hidden_size
    state = {}
    for key in (("h", "c") if config.cell == "lstm" else ("h",)):
        state[key] = np.empty((L, B, H), np.float32)
        _fill(state[key], need(f"state.{key}"), f"state.{key}")

    need("rng")
    try:
        rng_state = json.loads(_scalar(arrays, "rng", "U"))
    except ValueError:
        raise CheckpointError("checkpoint key 'rng' is not valid JSON") from None

    metrics = need("metrics")
    if metrics.ndim != 2 or metrics.shape[1] != len(METRIC_COLUMNS) or metrics.dtype != np.float64:
        raise CheckpointError("checkpoint key 'metrics' has the wrong shape or dtype")

    need("optim.step"), need("step"), need("epoch"), need("epoch_step")
    need("best_val_bpc"), need("elapsed")
    ckpt = Checkpoint(
        config=config, corpus_files=corpus_files, vocab=vocab, params=params,
        optim_step=int(_scalar(arrays, "optim.step", "iu")),
        optim_state=optim_state,
        step=int(_scalar(arrays, "step", "iu")),
        epoch=int(_scalar(arrays, "epoch", "iu")),
        epoch_step=int(_scalar(arrays, "epoch_step", "iu")),
        state=state, rng_state=rng_state, metrics=metrics.copy(),
        best_val_bpc=float(_scalar(arrays, "best_val_bpc", "f")),
        elapsed=float(_scalar(arrays, "elapsed", "f")),
    )
    if min(ckpt.optim_step, ckpt.step, ckpt.epoch, ckpt.epoch_step) < 0:
        raise CheckpointError("checkpoint counters are negative")
    return ckpt


def _fill(dest: np.ndarray, src: np.ndarray, key: str) -> None:
    if src.shape != dest.shape or src.dtype != dest.dtype:
        raise CheckpointError(
            f"checkpoint key {key!r} is {src.dtype}{list(src.shape)}, "
            f"expected {dest.dtype}{list(dest.shape)} for its configuration")
    dest[...] = src


def resolve_checkpoint(path, prefer_best: bool = False) -> Path:
    """A checkpoint file from a file or run-directory argument."""
    path = Path(path)
    if path.is_dir():
        names = ("best.npz", "last.npz") if prefer_best else ("last.npz",)
        for name in names:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no {' or '.join(names)} in this directory")
    return path
