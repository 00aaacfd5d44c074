"""Checkpoints: plain .npz files, written atomically, read without unpickling.

Every key is documented in the README ("Checkpoint format"). Parameters keep PyTorch's
state_dict names, so ``{k: torch.from_numpy(v)}`` of them loads into ``nn.LSTM`` (``nn.GRU``,
``nn.RNN``); the peephole cell's extra weights are named in the same style.
"""
from __future__ import annotations

import json
import os
import re
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charlstm import CHECKPOINT_FORMAT, __version__
from charlstm.model.cells import CELL_TABLE
from charlstm.training.config import STATISTICS, TrainConfig
from charlstm.data.corpus import CorpusFile, Vocab
from charlstm.errors import CheckpointError
from charlstm.model.parameters import FlatParams, param_shapes

READABLE_FORMATS = (1, CHECKPOINT_FORMAT)  # 1 stored the vocabulary as strings
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
    state: dict  # 'h' (and 'c' for the LSTM family): [num_layers, batch_size, hidden_size]
    rng_state: dict  # numpy bit generator state
    metrics: np.ndarray = field(default_factory=lambda: np.zeros((0, len(METRIC_COLUMNS))))
    best_val_bpc: float = float("nan")
    elapsed: float = 0.0  # training seconds over all invocations
    # What happened to the run's settings since it started: one dict per event, e.g.
    # {"step": 400, "event": "resume", "changes": {"lr": [0.002, 0.0002]}}.
    history: list = field(default_factory=list)
    # Where the corpus's relative paths were given from: {"absolute": DIR, "from_run": DIR
    # relative to the run directory}, so a resume finds the corpus from any working
    # directory, and after the folder holding the run and its corpus moves.
    origin: dict = field(default_factory=dict)

    def meta_json(self) -> str:
        return json.dumps({
            "format_version": CHECKPOINT_FORMAT,
            "charlstm_version": __version__,
            "hyperparameters": self.config.to_json_dict(),
            "corpus": [{"path": f.path, "sha256": f.sha256} for f in self.corpus_files],
            "history": self.history,
            "origin": self.origin,
        }, sort_keys=True)


def to_arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    arrays = {
        "config": np.array(ckpt.meta_json()),
        "vocab": ckpt.vocab.code_points(),
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
    flushed to disk, read back (its configuration and vocabulary must reload as written),
    then renamed over the target. A crash at any moment leaves either the old file or the
    new one, never a mix. Raises CheckpointError, saying what stays on disk, when the
    file cannot be written or does not read back."""
    from charlstm.files import atomic_write

    path = Path(path)
    arrays = to_arrays(ckpt)
    kept = ("the previous checkpoint is kept" if path.exists()
            else f"no {path.name} was written")
    try:
        with atomic_write(path) as f:
            np.savez(f, **arrays)
            f.flush()
            _check_reads_back(Path(f.name), arrays)
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {e.strerror or e}; {kept}") from None
    except CheckpointError as e:
        raise CheckpointError(f"could not write {path}: {e}; {kept}") from None


def _check_reads_back(path: Path, arrays: dict) -> None:
    """Raise CheckpointError unless the configuration and vocabulary of the file just
    written at ``path`` read back equal to ``arrays``'s."""
    reader = _NpzReader(path)
    try:
        for key, check in (("config", _expect("U", (), max_itemsize=MAX_CONFIG_BYTES)),
                           ("vocab", _expect("u", None))):
            back = reader.read(key, check)
            if back.dtype != arrays[key].dtype or not np.array_equal(back, arrays[key]):
                raise CheckpointError(f"its {key} does not read back as written")
    finally:
        reader.close()


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files that a save (or metrics.jsonl's rewrite) killed midway
    (SIGKILL, power loss) left behind."""
    for name in ("last.npz", "best.npz", "metrics.jsonl"):
        for tmp in Path(directory).glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass  # another process may own it; it never replaces a checkpoint by itself


# Limits that keep a hostile file from making charlstm commit memory: the JSON header,
# the metrics history, and how far the arrays may expand beyond the file's own size.
MAX_CONFIG_BYTES = 1 << 20
MAX_METRIC_ROWS = 10_000_000
MAX_EXPANSION = 100
MIN_EXPANSION_ALLOWANCE = 64 << 20
_HEADER_SLACK = 4096  # an .npy header is at most a few hundred bytes


def _scalar(arrays, key, kind):
    a = arrays[key]
    if a.shape != () or a.dtype.kind not in kind:
        raise CheckpointError(f"checkpoint key {key!r} has the wrong shape or dtype")
    return a.item()


class Damaged(CheckpointError):
    """A file charlstm wrote as a checkpoint whose bytes changed since: cut short,
    zero-filled or overwritten (a crash on a filesystem that does not order its writes,
    a full disk, a copy that stopped midway). The message says what was found."""


# How every checkpoint starts: a zip local-file header (np.savez writes no data
# descriptor) whose member is the configuration, which ``to_arrays`` puts first.
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_FIRST_MEMBER = b"config.npy"
# What reading a damaged member can raise, from zipfile, zlib and numpy's header parser.
_MEMBER_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
                  RuntimeError, NotImplementedError, SyntaxError, tokenize.TokenError, zlib.error,
                  KeyError, TypeError, IndexError)


def _short(error: BaseException) -> str:
    """The first line of ``error``'s message, at most 80 characters: a damaged header can
    make a parser quote pages of bytes."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _written_by_charlstm(path: Path) -> str | None:
    """Why the unreadable file ``path`` is a damaged checkpoint rather than some other
    file: empty, cut short, zeros from some byte on, a checkpoint's start with its end
    missing or overwritten, or a checkpoint's zip directory behind an overwritten start.
    None when neither its start nor its end looks like a checkpoint's."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 16) - 22))
            tail = f.read()
    except OSError:
        return None
    if not head:
        return "it is empty"
    if head.count(0) == len(head):
        return f"its first {len(head):,} bytes are zeros"
    if head.startswith(_ZIP_LOCAL_HEADER) and head[30:30 + len(_FIRST_MEMBER)] == _FIRST_MEMBER:
        if b"PK\x05\x06" not in tail:
            return f"it is cut short or its end is overwritten (it ends at byte {size:,} with no zip directory)"
        return "its zip directory is overwritten"
    if size < 30 + len(_FIRST_MEMBER) and _ZIP_LOCAL_HEADER.startswith(head[:4]):
        return f"it is cut short (it ends at byte {size:,})"
    written = head.rstrip(b"\0")
    tail_start = max(0, size - len(tail))
    last_written = tail_start + len(tail.rstrip(b"\0"))  # the end of the last non-zero byte seen
    if written and _ZIP_LOCAL_HEADER.startswith(written[:4]) and last_written <= max(len(written), tail_start):
        return f"it is zeros from byte {len(written):,} on" if len(written) < len(head) else \
            "its end is zeros"
    # The start is overwritten but the zip directory at the end still lists the members
    # charlstm writes, the first of which is always the configuration.
    if b"PK\x05\x06" in tail and b"PK\x01\x02" in tail and _FIRST_MEMBER in tail:
        return "its first bytes are overwritten"
    return None


class _NpzReader:
    """Reads the members of an .npz one by one, checking each .npy header (dtype and
    shape) against what the configuration implies before any data is read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except _MEMBER_ERRORS as e:
            # NotImplementedError: a damaged header can claim an unsupported compression.
            damage = _written_by_charlstm(path)
            if damage is not None:
                raise Damaged(damage) from None
            raise CheckpointError(f"not a zip archive, so not a charlstm checkpoint ({_short(e)})") from None
        self.members = {}
        for info in infos:
            if not info.filename.endswith(".npy") or info.filename[:-4] in self.members:
                damage = _written_by_charlstm(path)
                if damage is not None:
                    raise Damaged(f"its zip directory names a member {info.filename!r}, which "
                                  f"charlstm never writes: it is overwritten") from None
                raise CheckpointError(f"unexpected member {info.filename!r}: not a charlstm checkpoint")
            self.members[info.filename[:-4]] = info
        declared = sum(i.file_size for i in infos)
        allowed = max(MIN_EXPANSION_ALLOWANCE, MAX_EXPANSION * path.stat().st_size)
        if declared > allowed:
            raise CheckpointError(
                f"declares {declared:,} bytes of arrays in a {path.stat().st_size:,}-byte file; refused")

    def close(self):
        self.zip.close()

    def _holds_member(self, key: str) -> bool:
        """Whether the file's bytes hold a zip local header for member ``key`` (a key the
        directory does not list is then damage, not a file written without it)."""
        name = key.encode() + b".npy"
        with open(self.path, "rb") as f:
            data = f.read()
        at = data.find(_ZIP_LOCAL_HEADER)
        while at >= 0:
            name_length = int.from_bytes(data[at + 26:at + 28], "little")
            if name_length == len(name) and data[at + 30:at + 30 + len(name)] == name:
                return True
            at = data.find(_ZIP_LOCAL_HEADER, at + 1)
        return False

    def __contains__(self, key):
        return key in self.members

    def read(self, key: str, check) -> np.ndarray:
        """Read member ``key``; ``check(dtype, shape)`` returns an error string or None."""
        info = self.members.get(key)
        if info is None:
            if self._holds_member(key):
                raise Damaged(f"its zip directory is overwritten: it does not list the {key!r} "
                              f"array the file holds")
            raise CheckpointError(f"checkpoint lacks the key {key!r}")
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                if dtype.hasobject:
                    raise CheckpointError(
                        f"checkpoint key {key!r} holds Python objects; refused without unpickling")
                problem = check(dtype, shape)
                if problem:
                    raise CheckpointError(f"checkpoint key {key!r} is {dtype}{list(shape)}: {problem}")
                nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
                if info.file_size > nbytes + _HEADER_SLACK:
                    raise CheckpointError(f"checkpoint key {key!r} declares more data than its shape holds")
            with self.zip.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except CheckpointError:
            raise
        except _MEMBER_ERRORS as e:
            raise Damaged(f"its {key!r} array does not read back ({_short(e)})") from None


def _expect(dtype_kind: str, shape=None, max_itemsize: int = 8, max_shape=None):
    """A header check: dtype kind in ``dtype_kind`` and, if given, an exact shape."""
    def check(dtype, actual):
        if dtype.kind not in dtype_kind or dtype.itemsize > max_itemsize:
            return "wrong dtype"
        if shape is not None and tuple(actual) != tuple(shape):
            return f"expected shape {list(shape)} for its configuration"
        if max_shape is not None and not max_shape(actual):
            return "wrong or implausible shape"
        return None
    return check


def _exact(dtype, shape):
    dtype = np.dtype(dtype)

    def check(actual_dtype, actual):
        if actual_dtype != dtype or tuple(actual) != tuple(shape):
            return f"expected {dtype}{list(shape)} for its configuration"
        return None
    return check


def _validate_config(config: TrainConfig, vocab_size: int) -> None:
    """Refuse configurations no CLI run could have written, before sizing arrays by them."""
    from charlstm.training.config import InvalidSetting, validate

    try:
        validate(config)
    except InvalidSetting as e:
        raise CheckpointError(f"checkpoint configuration has an {e}") from None
    # Counted from the formula, not by listing the tensors: a hostile num_layers must not
    # make the check itself take forever.
    cell = CELL_TABLE[config.cell]
    G, H, L = cell.gates, config.hidden_size, config.num_layers
    n_params = (L * (G * H * (vocab_size + 2 * H + 2) + len(cell.peepholes) * H)
                + vocab_size * (H + 1))
    if n_params > 2_000_000_000 or L * config.batch_size * H > 2_000_000_000:
        raise CheckpointError("checkpoint configuration declares an implausibly large model; refused")


def load(path) -> Checkpoint:
    """Read and validate a checkpoint. Never unpickles anything; every array's dtype and
    shape is checked against the configuration before its data is read. Raises
    CheckpointError naming ``path``; for a damaged file (cut short, zero-filled:
    ``Damaged``), the message names the intact checkpoint beside it to use instead."""
    path = Path(path)
    try:
        return _load(path)
    except Damaged as e:
        raise Damaged(f"{path}: the file is damaged: {e}; {_recovery(path)}") from None
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _load(path: Path) -> Checkpoint:
    if not path.is_file():
        raise CheckpointError("no such checkpoint")
    reader = _NpzReader(path)
    try:
        arrays = _read_checkpoint_arrays(reader)
    finally:
        reader.close()
    return from_arrays(arrays)


def _recovery(path: Path) -> str:
    """What to use instead of the damaged checkpoint ``path``: another checkpoint of the
    same run directory that loads (best.npz, last.npz, then the best models kept from
    earlier validation texts), or a copy."""
    run_dir = path.parent
    kept = sorted(run_dir.glob("best-before-step-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for other in [run_dir / "best.npz", run_dir / "last.npz", *kept]:
        if other.name == path.name or not other.is_file():
            continue
        try:
            step = _load(other).step
        except CheckpointError:
            continue
        if path.name == "last.npz":
            return (f"{other} (step {step}) is intact: use it, or copy it over last.npz "
                    f"(cp {other} {path}) and resume from there")
        return f"{other} (step {step}) is intact: use it instead"
    return "no other checkpoint beside it is intact: restore it from a copy"


def _read_checkpoint_arrays(reader: _NpzReader) -> dict[str, np.ndarray]:
    arrays = {}
    arrays["config"] = reader.read("config", _expect("U", (), max_itemsize=MAX_CONFIG_BYTES))
    config = _parse_meta(arrays["config"])[0]
    arrays["vocab"] = reader.read("vocab", _expect("uU", None, max_itemsize=4,
                                                   max_shape=lambda s: len(s) == 1 and 0 < s[0] <= 0x110000))
    V = len(arrays["vocab"])
    _validate_config(config, V)
    shapes = param_shapes(config, V)
    for name, shape in shapes.items():
        arrays[name] = reader.read(name, _exact(np.float32, shape))
    for stat in STATISTICS[config.optimizer]:
        for name, shape in shapes.items():
            key = f"optim.{stat}.{name}"
            if key in reader or stat != "momentum_buffer":
                arrays[key] = reader.read(key, _exact(np.float32, shape))
    state_shape = (config.num_layers, config.batch_size, config.hidden_size)
    for key in CELL_TABLE[config.cell].state:
        arrays[f"state.{key}"] = reader.read(f"state.{key}", _exact(np.float32, state_shape))
    for key in ("optim.step", "step", "epoch", "epoch_step"):
        arrays[key] = reader.read(key, _expect("iu", ()))
    for key in ("best_val_bpc", "elapsed"):
        arrays[key] = reader.read(key, _expect("f", ()))
    arrays["rng"] = reader.read("rng", _expect("U", (), max_itemsize=MAX_CONFIG_BYTES))
    arrays["metrics"] = reader.read("metrics", _expect(
        "f", None, max_shape=lambda s: len(s) == 2 and s[1] == len(METRIC_COLUMNS) and s[0] <= MAX_METRIC_ROWS))
    return arrays


def _vocab_from_array(vocab_arr: np.ndarray) -> Vocab:
    """The vocabulary stored as code points (uint32, strictly increasing; format 2), or
    as an array of one-character strings (format 1, which could not hold U+0000)."""
    if vocab_arr.ndim != 1 or len(vocab_arr) == 0:
        raise CheckpointError("checkpoint key 'vocab' must be a non-empty 1-D array")
    if vocab_arr.dtype == np.dtype("<u4"):
        codes = vocab_arr.astype(np.int64)
        if (codes.max() > 0x10FFFF or np.any(np.diff(codes) <= 0)
                or np.any((codes >= 0xD800) & (codes <= 0xDFFF))):
            raise CheckpointError("checkpoint key 'vocab' must hold increasing Unicode code points")
        return Vocab(chr(int(c)) for c in codes)
    if vocab_arr.dtype == np.dtype("<U1"):
        # Format 1 stored U+0000 as "" (a <U1 array cannot hold it); sorted first, an
        # empty string at index 0 can only have been U+0000.
        vocab = Vocab("\x00" if k == 0 and str(c) == "" else str(c) for k, c in enumerate(vocab_arr))
        if len(set(vocab.chars)) != len(vocab.chars) or any(len(c) != 1 for c in vocab.chars):
            raise CheckpointError("checkpoint vocabulary has repeated or empty characters")
        return vocab
    raise CheckpointError("checkpoint key 'vocab' must be uint32 code points")


def _check_history(history) -> None:
    """Raise ValueError unless ``history`` is a list of events as train/resume write them:
    {"step": int, "event": str, optional "changes": {name: [old, new]}, ...}."""
    if not isinstance(history, list):
        raise ValueError("'history' is not a list")
    for event in history:
        if (not isinstance(event, dict) or not isinstance(event.get("step"), int)
                or not isinstance(event.get("event"), str)):
            raise ValueError("a 'history' event lacks its step or name")
        changes = event.get("changes", {})
        if not isinstance(changes, dict) or not all(
                isinstance(v, list) and len(v) == 2 for v in changes.values()):
            raise ValueError("a 'history' event's changes are not [old, new] pairs")


def _parse_meta(meta_raw: np.ndarray):
    if meta_raw.shape != () or meta_raw.dtype.kind != "U":
        raise CheckpointError("checkpoint key 'config' is not a JSON string")
    try:
        meta = json.loads(meta_raw.item())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        upgrade = _upgrade_needed(meta)
        if meta.get("format_version") not in READABLE_FORMATS:
            raise CheckpointError(upgrade or (
                f"checkpoint format {meta.get('format_version')!r} is not one charlstm writes "
                f"(this charlstm reads formats {', '.join(map(str, READABLE_FORMATS))})"))
        try:
            config = TrainConfig.from_json_dict(meta["hyperparameters"])
        except (ValueError, TypeError) as e:
            if upgrade is not None:  # settings this version does not know
                raise CheckpointError(f"{upgrade} ({_short(e)})") from None
            raise
        corpus_files = [CorpusFile(str(f["path"]), str(f["sha256"])) for f in meta["corpus"]]
        history = meta.get("history", [])
        origin = meta.get("origin", {})
        _check_history(history)
        if not isinstance(origin, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in origin.items()):
            raise ValueError("'origin' is not an object of strings")
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint configuration is unreadable ({e})") from None
    return config, corpus_files, history, origin


def _version_key(version: str) -> tuple:
    """"1.10.2rc1" -> (1, 10, 2): the release numbers, for comparing versions."""
    release = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in release.group().split(".")) if release else ()


def _upgrade_needed(meta: dict) -> str | None:
    """When a newer charlstm than this one wrote the checkpoint described by ``meta`` (a
    later version, or a checkpoint format after this one's), the message saying so and
    to upgrade; else None."""
    version, fmt = meta.get("charlstm_version"), meta.get("format_version")
    upgrade = "upgrade charlstm to read it"
    if isinstance(version, str) and _version_key(version) > _version_key(__version__):
        return f"written by charlstm {version}, newer than this one ({__version__}): {upgrade}"
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > CHECKPOINT_FORMAT:
        return (f"written by a newer charlstm than this one ({__version__}): its checkpoint "
                f"format is {fmt}, this one reads {', '.join(map(str, READABLE_FORMATS))}; {upgrade}")
    return None


def from_arrays(arrays: dict[str, np.ndarray]) -> Checkpoint:
    def need(key):
        if key not in arrays:
            raise CheckpointError(f"checkpoint lacks the key {key!r}")
        return arrays[key]

    config, corpus_files, history, origin = _parse_meta(need("config"))

    vocab = _vocab_from_array(need("vocab"))
    _validate_config(config, len(vocab))

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
            elif stat != "momentum_buffer":  # PyTorch too omits it when momentum is 0
                need(key)
        optim_state[stat] = values

    L, B, H = config.num_layers, config.batch_size, config.hidden_size
    state = {}
    for key in CELL_TABLE[config.cell].state:
        state[key] = np.empty((L, B, H), np.float32)
        _fill(state[key], need(f"state.{key}"), f"state.{key}")

    need("rng")
    try:
        rng_state = json.loads(_scalar(arrays, "rng", "U"))
        probe = np.random.default_rng()
        probe.bit_generator.state = rng_state
    except (ValueError, TypeError, KeyError, RecursionError):
        raise CheckpointError("checkpoint key 'rng' is not a valid generator state") from None

    metrics = need("metrics")
    if metrics.ndim != 2 or metrics.shape[1] != len(METRIC_COLUMNS) or metrics.dtype != np.float64:
        raise CheckpointError("checkpoint key 'metrics' has the wrong shape or dtype")

    for key in ("optim.step", "step", "epoch", "epoch_step", "best_val_bpc", "elapsed"):
        need(key)
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
        history=history, origin=origin,
    )
    if min(ckpt.optim_step, ckpt.step, ckpt.epoch, ckpt.epoch_step) < 0:
        raise CheckpointError("checkpoint counters are negative")
    if not np.all(np.isfinite(params.flat)):
        raise CheckpointError("checkpoint parameters hold NaN or infinite values")
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
