"""A trained model in the formats other tools read: safetensors, ONNX, a Hugging Face
style folder, TensorBoard event files. Each needs an optional package, named in the
error when it is missing.

- **safetensors**: the parameters under their state_dict names (float32), with the
  configuration and the vocabulary (code points) as JSON in the metadata. The lstm, gru
  and rnn load into ``nn.LSTM``/``nn.GRU``/``nn.RNN`` named ``rnn`` and ``nn.Linear``
  named ``decoder`` with ``load_state_dict``.
- **onnx**: the network as ONNX LSTM, GRU or RNN operators (opset 17), one per layer,
  and the decoder: inputs ``ids`` int64 [T, B] and the carried state ``h0`` (and ``c0``)
  [L, B, H]; outputs ``logits`` [T, B, V] and ``hn`` (and ``cn``). PyTorch's gate order
  i, f, g, o becomes ONNX's i, o, f, c; the GRU's r, z, n becomes z, r, h with
  linear_before_reset=1, which is PyTorch's GRU. The peephole cell passes its diagonal
  weights as ONNX's P = [ci, co, cf]. The cifg cell is an ordinary ONNX LSTM whose
  forget rows are the input rows negated: sigmoid(-a) = 1 - sigmoid(a), so f = 1 - i
  exactly as the cell defines it, in every runtime (onnx's reference evaluator ignores
  the input_forget attribute).
- **hf**: a folder with model.safetensors, config.json, vocab.json and a README.md model
  card, which ``charlstm sample FOLDER`` (and eval, info) read back.
- **tensorboard**: a run's metrics.jsonl as TensorBoard scalars and hyperparameters.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from charlstm import __version__
from charlstm.model.checkpoint import Checkpoint
from charlstm.training.config import TrainConfig
from charlstm.errors import UserError
from charlstm.files import atomic_directory, atomic_write, print_warning, read_json_lines

FORMATS = ("safetensors", "onnx", "hf", "tensorboard")
EXTRA_OF = {"safetensors": "safetensors", "onnx": "onnx", "hf": "safetensors",
            "tensorboard": "tensorboard"}
ONNX_OPSET = 17
FOLDER_FORMATS = ("hf", "tensorboard")
HF_WEIGHTS, HF_CONFIG, HF_VOCAB, HF_CARD = "model.safetensors", "config.json", "vocab.json", "README.md"
# What training and sweeps write in a run directory (tokens/ is the token cache,
# tensorboard/ train --tensorboard's default), and the files a run is recognised by.
RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl", ".lock", "tokens", "tensorboard",
             "trial.json", "trial.toml")
RUN_MARKERS = ("last.npz", "best.npz", "metrics.jsonl")
ANOTHER = "choose another -o"


def _need(module: str, fmt: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UserError(f"--format {fmt} needs {module.split('.')[0]}: "
                        f"pip install 'charlstm[{EXTRA_OF[fmt]}]'") from None


def _metadata(ckpt: Checkpoint) -> dict:
    return {"format": "charlstm", "charlstm_version": __version__,
            "config": json.dumps(ckpt.config.to_json_dict()),
            "vocab": json.dumps([ord(c) for c in ckpt.vocab.chars]),
            "step": str(ckpt.step), "best_val_bpc": repr(float(ckpt.best_val_bpc))}


def check_output(sources, output, fmt: str | None = None, writer: str = "export") -> None:
    """Refuse to write ``output`` where it would replace what the command reads
    (``sources``: one path or several, each a file, run directory or hf folder, under any
    spelling or symlink; built-in corpus names are passed over), an existing charlstm
    checkpoint, a file of a run directory (RUN_FILES, kept checkpoints, their
    temporaries), or, for a folder format ``fmt``, a directory that is or is inside a run
    directory. ``writer`` names what writes (export, plot) in the message. Raises
    UserError naming the fix."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    output, folder = Path(output), fmt in FOLDER_FORMATS
    target = output.resolve()
    _check_outside_runs(output, target, fmt, writer)
    reads = [path for source in sources if not str(source).startswith("builtin:")
             for path in _inputs(Path(source))]
    if any(target == path or _same_file(target, path) for path in reads):
        raise UserError(f"-o {output} is what this {writer} reads; write it to a "
                        f"new path: {ANOTHER}")
    if target.is_file() and _is_checkpoint(target):
        raise UserError(f"-o {output} is a charlstm checkpoint, which {writer}s never "
                        f"replace: {ANOTHER}")
    if folder and output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output} already exists and is not an empty directory; remove it or "
                        f"{ANOTHER}")
    if not folder and output.is_dir():
        raise UserError(f"{output} is a directory; give -o the file to write")


def _check_outside_runs(output: Path, target: Path, fmt: str | None, writer: str) -> None:
    """Refuse ``target`` (``output`` resolved) when it is a run's file or inside a
    folder of a run, or, for a folder format, a run directory or inside one."""
    for run_dir in (target, *target.parents):
        if not _is_run_directory(run_dir):
            continue
        if fmt in FOLDER_FORMATS:
            where = "is the run directory" if run_dir == target else "is inside the run directory"
            raise UserError(f"-o {output} {where} {run_dir}; a --format {fmt} folder goes "
                            f"outside runs: {ANOTHER}")
        if run_dir != target:
            name = target.relative_to(run_dir).parts[0]
            if _belongs_to_run(name):
                what = (f"is {name}, a file" if target.parent == run_dir
                        else f"is inside {name}, a folder")
                raise UserError(f"-o {output} {what} of the run in {run_dir}, which {writer}s "
                                f"never replace: {ANOTHER}")


def _inputs(source: Path) -> list[Path]:
    """The paths an export of ``source`` reads, resolved: the file, or the directory
    and what a reader takes from it."""
    source = Path(source).resolve()
    if not source.is_dir():
        return [source]
    names = (HF_WEIGHTS, HF_CONFIG, HF_VOCAB, HF_CARD, *RUN_MARKERS)
    return [source, *(source / name for name in names)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link too
    except OSError:
        return False


def _is_run_directory(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_MARKERS)


def _belongs_to_run(name: str) -> bool:
    """Whether a run writes a file or folder called ``name`` at its top level."""
    return (name in RUN_FILES or (name.startswith("best-before-step-") and name.endswith(".npz"))
            or any(name.startswith(f".{run_file}.") for run_file in RUN_FILES))


def _is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a zip holding an array named config, as every charlstm
    checkpoint does (numpy's own .npz files hold other names)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        return False


def export_safetensors(ckpt: Checkpoint, path: Path) -> None:
    """``ckpt``'s parameters to a .safetensors file at ``path`` (see the module's text),
    written whole or not at all. Raises OSError when it cannot be written."""
    with atomic_write(path, parents=True) as f:
        f.write(_safetensors_bytes(ckpt))


def _safetensors_bytes(ckpt: Checkpoint) -> bytes:
    numpy_api = _need("safetensors.numpy", "safetensors")
    tensors = {name: np.ascontiguousarray(view) for name, view in ckpt.params.items()}
    return numpy_api.save(tensors, metadata=_metadata(ckpt))


def load_safetensors(path: Path) -> Checkpoint:
    """A Checkpoint (parameters, configuration and vocabulary; no optimizer state) from a
    file ``export_safetensors`` wrote. Raises UserError for any other file."""
    from charlstm.model.checkpoint import _validate_config, _vocab_from_array
    from charlstm.errors import CheckpointError
    from charlstm.model.parameters import FlatParams, param_shapes

    numpy_api = _need("safetensors.numpy", "safetensors")
    safe_open = _need("safetensors", "safetensors").safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "charlstm":
            raise UserError(f"{path} is not a charlstm export (no charlstm metadata)")
        config = TrainConfig.from_json_dict(json.loads(meta["config"]))
        codes = json.loads(meta["vocab"])
        if not isinstance(codes, list) or not all(isinstance(c, int) and 0 <= c <= 0x10FFFF for c in codes):
            raise UserError(f"{path}: its vocabulary is not a list of code points")
        vocab = _vocab_from_array(np.array(codes, dtype="<u4"))
        step = int(meta.get("step", 0))
        tensors = numpy_api.load_file(str(path))
    except UserError:
        raise
    except Exception as e:  # safetensors raises its own errors for damaged files
        raise UserError(f"{path}: not a readable charlstm safetensors file ({e})") from None
    try:
        _validate_config(config, len(vocab))
    except CheckpointError as e:
        raise UserError(f"{path}: {e}") from None
    if step < 0:
        raise UserError(f"{path}: its step is negative")
    shapes = param_shapes(config, len(vocab))
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise UserError(f"{path}: tensor {extra[0]!r} is not a parameter of its {config.cell} model")
    params = FlatParams(shapes, dtype=np.float32)
    for name, shape in shapes.items():
        if name not in tensors:
            raise UserError(f"{path}: lacks the tensor {name!r}")
        if tensors[name].shape != tuple(shape) or tensors[name].dtype != np.float32:
            raise UserError(f"{path}: tensor {name!r} is {tensors[name].dtype}{list(tensors[name].shape)}, "
                            f"expected float32{list(shape)} for a vocabulary of {len(vocab)} and its configuration")
        params[name][...] = tensors[name]
    if not np.all(np.isfinite(params.flat)):
        raise UserError(f"{path}: its parameters hold NaN or infinite values")
    L, H = config.num_layers, config.hidden_size
    state = {"h": np.zeros((L, config.batch_size, H), np.float32)}
    return Checkpoint(config=config, corpus_files=[], vocab=vocab, params=params,
                      optim_step=0, optim_state={}, step=step, epoch=0,
                      epoch_step=0, state=state, rng_state={},
                      best_val_bpc=float(meta.get("best_val_bpc", "nan")))


def _lstm_rows(a: np.ndarray, cell: str) -> np.ndarray:
    """PyTorch's gate blocks (lstm/peephole: i, f, g, o; cifg: i, g, o) in ONNX's order
    i, o, f, c; cifg's f rows are its i rows negated (f = 1 - i = sigmoid(-a_i))."""
    if cell == "cifg":
        i, g, o = np.split(a, 3, axis=0)
        f = -i
    else:
        i, f, g, o = np.split(a, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def _gru_rows(a: np.ndarray) -> np.ndarray:
    r, z, n = np.split(a, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def onnx_model(ckpt: Checkpoint):
    """``ckpt``'s network as an ONNX ModelProto (see the module's text)."""
    onnx = _need("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    cfg, p = ckpt.config, ckpt.params
    L, H, V = cfg.num_layers, cfg.hidden_size, len(ckpt.vocab)
    family = {"lstm": "LSTM", "peephole": "LSTM", "cifg": "LSTM", "gru": "GRU", "rnn": "RNN"}[cfg.cell]
    has_c = family == "LSTM"
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.require(array, requirements="C"), name))  # keeps 0-d
        return name

    const("onehot_depth", np.array(V, np.int64))
    const("onehot_values", np.array([0.0, 1.0], np.float32))
    nodes.append(helper.make_node("OneHot", ["ids", "onehot_depth", "onehot_values"], ["x0"], axis=-1))
    const("axis0", np.array([0], np.int64))
    const("axis1", np.array([1], np.int64))
    x, hs, cs = "x0", [], []
    for k in range(L):
        w, r = p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"]
        b = np.concatenate([p[f"rnn.bias_ih_l{k}"], p[f"rnn.bias_hh_l{k}"]])
        bi, bh = p[f"rnn.bias_ih_l{k}"], p[f"rnn.bias_hh_l{k}"]
        if family == "LSTM":
            w, r = _lstm_rows(w, cfg.cell), _lstm_rows(r, cfg.cell)
            b = np.concatenate([_lstm_rows(bi, cfg.cell), _lstm_rows(bh, cfg.cell)])
        elif family == "GRU":
            w, r = _gru_rows(w), _gru_rows(r)
            b = np.concatenate([_gru_rows(bi), _gru_rows(bh)])
        const(f"W{k}", w[None])
        const(f"R{k}", r[None])
        const(f"B{k}", b[None])
        const(f"start{k}", np.array([k], np.int64))
        const(f"end{k}", np.array([k + 1], np.int64))
        nodes.append(helper.make_node("Slice", ["h0", f"start{k}", f"end{k}", "axis0"], [f"h0_{k}"]))
        inputs = [x, f"W{k}", f"R{k}", f"B{k}", "", f"h0_{k}"]
        outputs = [f"y{k}", f"hn{k}"]
        attrs = {"hidden_size": H}
        if has_c:
            nodes.append(helper.make_node("Slice", ["c0", f"start{k}", f"end{k}", "axis0"], [f"c0_{k}"]))
            inputs.append(f"c0_{k}")
            outputs.append(f"cn{k}")
            if cfg.cell == "peephole":
                inputs.append(const(f"P{k}", np.concatenate(
                    [p[f"rnn.weight_ci_l{k}"], p[f"rnn.weight_co_l{k}"], p[f"rnn.weight_cf_l{k}"]])[None]))
        if family == "GRU":
            attrs["linear_before_reset"] = 1
        nodes.append(helper.make_node(family, inputs, outputs, **attrs))
        nodes.append(helper.make_node("Squeeze", [f"y{k}", "axis1"], [f"x{k + 1}"]))
        x = f"x{k + 1}"
        hs.append(f"hn{k}")
        cs.append(f"cn{k}")
    const("dec_wt", p["decoder.weight"].T)
    const("dec_b", p["decoder.bias"])
    nodes.append(helper.make_node("MatMul", [x, "dec_wt"], ["dec"]))
    nodes.append(helper.make_node("Add", ["dec", "dec_b"], ["logits"]))
    nodes.append(helper.make_node("Concat", hs, ["hn"], axis=0))
    graph_inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["T", "B"]),
                    helper.make_tensor_value_info("h0", TensorProto.FLOAT, [L, "B", H])]
    graph_outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", "B", V]),
                     helper.make_tensor_value_info("hn", TensorProto.FLOAT, [L, "B", H])]
    if has_c:
        nodes.append(helper.make_node("Concat", cs, ["cn"], axis=0))
        graph_inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [L, "B", H]))
        graph_outputs.append(helper.make_tensor_value_info("cn", TensorProto.FLOAT, [L, "B", H]))
    graph = helper.make_graph(nodes, f"charlstm_{cfg.cell}", graph_inputs, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="charlstm", producer_version=__version__)
    meta = _metadata(ckpt)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(ckpt: Checkpoint, path: Path) -> None:
    """``ckpt``'s network as an ONNX file at ``path``, written whole or not at all.
    Raises OSError when it cannot be written."""
    onnx = _need("onnx", "onnx")
    model = onnx_model(ckpt)
    with atomic_write(path, parents=True) as f:
        onnx.save(model, f)


def model_card(ckpt: Checkpoint, sample: str) -> str:
    """The README.md of an hf folder: metadata for the Hub, then what the model is."""
    cfg = ckpt.config
    best = ckpt.best_val_bpc
    scored = "not validated" if math.isnan(best) else f"{best:.4f} bits per character"
    # A file name that is not UTF-8 (bytes a walk kept as surrogate escapes) is shown
    # with its undecodable bytes replaced: the card is UTF-8.
    corpora = ", ".join(f"`{_as_utf8(f.path)}`" for f in ckpt.corpus_files) or "unknown"
    fence = "```"
    return (f"---\nlibrary_name: charlstm\npipeline_tag: text-generation\ntags:\n- character-level\n"
            f"- {cfg.cell}\n---\n\n# charlstm {cfg.cell} {cfg.num_layers}x{cfg.hidden_size}\n\n"
            f"A character-level language model trained with charlstm {__version__}: {cfg.cell}, "
            f"{cfg.num_layers} layers of hidden size {cfg.hidden_size}, a vocabulary of "
            f"{len(ckpt.vocab)} characters, {ckpt.step} steps on {corpora}. Validation: {scored} "
            f"on the last {cfg.val_frac:g} of the text.\n\n"
            f"    charlstm sample THIS_FOLDER --length 500\n\n"
            f"Files: `{HF_WEIGHTS}` (the parameters under PyTorch's state_dict names), "
            f"`{HF_CONFIG}` (the training configuration), `{HF_VOCAB}` (the vocabulary as "
            f"Unicode code points; a character's id is its index).\n\n"
            f"## A sample (temperature 0.8, seed 0)\n\n{fence}text\n{sample}\n{fence}\n")


def _as_utf8(text: str) -> str:
    """``text`` with the bytes a surrogate escape stands for read as UTF-8, and those
    that are not UTF-8 replaced by U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def export_hf(ckpt: Checkpoint, folder: Path) -> None:
    """An hf folder for ``ckpt`` (see the module's text), built beside ``folder`` and
    renamed into place whole. Raises OSError when it cannot be written; nothing of it
    is left then."""
    from charlstm.model.sample import Sampler

    weights = _safetensors_bytes(ckpt)
    config = json.dumps({
        "library_name": "charlstm", "charlstm_version": __version__,
        "config": ckpt.config.to_json_dict(), "step": ckpt.step,
        "best_val_bpc": None if math.isnan(ckpt.best_val_bpc) else ckpt.best_val_bpc,
        "corpus": [{"path": f.path, "sha256": f.sha256} for f in ckpt.corpus_files]}, indent=2)
    sampler = Sampler(ckpt)
    rng = np.random.default_rng(0)
    sampler.prime("", rng)
    sample = "".join(sampler.stream(300, 0.8, 0, rng))
    with atomic_directory(folder) as building:
        (building / HF_WEIGHTS).write_bytes(weights)
        (building / HF_CONFIG).write_text(config, encoding="utf-8")
        (building / HF_VOCAB).write_text(json.dumps([ord(c) for c in ckpt.vocab.chars]), encoding="utf-8")
        (building / HF_CARD).write_text(model_card(ckpt, sample), encoding="utf-8")


def is_hf_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / HF_WEIGHTS).is_file() and (Path(path) / HF_CONFIG).is_file()


def export_tensorboard(run_dir: Path, out: Path, warn=print_warning) -> int:
    """The run's metrics.jsonl as TensorBoard events in ``out``, a folder built beside
    it and renamed into place whole; returns the rows written. Lines of metrics.jsonl
    that are not whole rows (cut or zero-filled by a crash) are left out, and ``warn``
    is given one line saying so. Raises UserError when no row is usable or the folder
    cannot be written."""
    from charlstm.model import checkpoint as ckpt_io
    from charlstm.tools.tensorboard import TensorBoardLog

    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; --format tensorboard exports a run directory")
    log = read_json_lines(metrics, is_metrics_row)
    if not log.records:
        what = log.skipped_note() or f"{metrics} is empty"
        raise UserError(f"{what}; no metrics row to export: train the run first")
    ckpt = ckpt_io.load(ckpt_io.resolve_checkpoint(run_dir))
    if log.skipped:
        warn(log.skipped_note())
    fix = f"nothing was written: free space or {ANOTHER}"
    try:
        with atomic_directory(out) as building:
            board = TensorBoardLog(building, fix, shown_as=out)
            for row in log.records:
                board.write(row)
            board.close(ckpt.config, ckpt.best_val_bpc)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); {fix}") from None
    return len(log.records)


def is_metrics_row(record) -> bool:
    """Whether ``record`` is a metrics.jsonl row: an object with a whole, finite step,
    whose values drawn as scalars are numbers where they are there."""
    from charlstm.tools.tensorboard import SCALARS

    step = record.get("step") if isinstance(record, dict) else None
    return _is_number(step) and math.isfinite(step) and step == int(step) \
        and all(record.get(key) is None or _is_number(record[key]) for key in SCALARS)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
