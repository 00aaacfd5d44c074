"""Every user error: one line on stderr that names the problem (and the fix), a non-zero
exit (2 for usage errors, 1 for the rest), no traceback. Runs the real CLI."""
import json
import re
import zipfile

import numpy as np
import pytest

from conftest import make_text, run_cli

TINY = ["--hidden-size", "8", "--num-layers", "1", "--seq-len", "8", "--batch-size", "2", "--quiet",
        # the tuner (tests/test_blas_choice.py) would add seconds to every run here
        "--blas", "openblas", "--step-weights", "stored/stored"]


def assert_user_error(proc, code, *patterns):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines[-1].startswith("Error: "), err
    if code == 1:
        assert len(lines) == 1, err
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small finished run whose checkpoint the checkpoint tests corrupt."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(3000))
    run = tmp / "run"
    run_cli("train", corpus, *TINY, "--steps", "2", "--out", run)
    return run


def corpus_file(tmp_path, name="c.txt", text=None):
    p = tmp_path / name
    p.write_text(make_text(3000) if text is None else text, encoding="utf-8")
    return p


# -- corpus -------------------------------------------------------------------------------

def test_path_that_does_not_exist(tmp_path):
    proc = run_cli("train", tmp_path / "missing.txt", *TINY, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"missing\.txt: no such file or directory")


def test_directory_without_text_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "blob.bin").write_bytes(bytes(range(256)) * 4)
    proc = run_cli("train", d, *TINY, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"holds no text files")


def test_empty_file(tmp_path):
    proc = run_cli("train", corpus_file(tmp_path, text=""), *TINY, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"c\.txt is empty")


def test_corpus_too_short_says_how_many_characters(tmp_path):
    proc = run_cli("train", corpus_file(tmp_path, text="abcdefghij" * 3), "--seq-len", "50",
                   "--batch-size", "4", "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"needs at least 204", r"--seq-len 50")


def test_binary_file(tmp_path):
    exe = tmp_path / "program"
    exe.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(1000))
    proc = run_cli("train", exe, *TINY, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"program looks binary")
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100))
    proc = run_cli("train", png, *TINY, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"image\.png looks binary")


def test_invalid_encoding_names_file_offset_and_option(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes(("x" * 50 + "caf\xe9 ").encode("latin-1") * 40)
    proc = run_cli("train", p, *TINY, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"latin\.txt: not valid utf-8 at byte 53", r"--encoding")


def test_files_in_different_encodings(tmp_path):
    corpus_file(tmp_path, "a.txt")
    (tmp_path / "b.txt").write_bytes("na\xefve text\n".encode("latin-1") * 100)
    proc = run_cli("train", tmp_path / "a.txt", tmp_path / "b.txt", *TINY, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"b\.txt: not valid utf-8", r"share one encoding")


def test_utf16_and_utf32_files_with_a_byte_order_mark_are_read_as_such(tmp_path):
    """A byte-order mark says how a file is encoded, and a UTF-8 reader can never read
    such a file: it is obeyed, as when the encoding is named."""
    import numpy as np

    text = make_text(2000) + "ça ✓\n"
    for name, codec in (("u16.txt", "utf-16"), ("u32.txt", "utf-32")):
        p = tmp_path / name
        p.write_bytes(text.encode(codec))
        run_cli("train", p, *TINY, "--steps", "1", "--out", tmp_path / f"{name}.auto")
        run_cli("train", p, *TINY, "--steps", "1", "--encoding", codec, "--out", tmp_path / f"{name}.named")
        for run in (f"{name}.auto", f"{name}.named"):
            vocab = np.load(tmp_path / run / "last.npz", allow_pickle=False)["vocab"]
            assert "".join(map(chr, vocab)) == "".join(sorted(set(text)))


# -- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("args,pattern", [
    (["--hidden-size", "0"], r"--hidden-size"),
    (["--num-layers", "-1"], r"--num-layers"),
    (["--batch-size", "0"], r"--batch-size"),
    (["--seq-len", "0"], r"--seq-len"),
    (["--steps", "-5"], r"--steps"),
    (["--lr", "0"], r"--lr"),
    (["--lr", "-1e-3"], r"--lr"),
    (["--val-frac", "1"], r"--val-frac"),
    (["--val-frac", "-0.1"], r"--val-frac"),
    (["--time", "soon"], r"--time"),
    (["--cell", "transformer"], r"--cell"),
    (["--lr", "nan"], r"--lr.*not nan"),
    (["--lr", "inf"], r"--lr.*not inf"),
    (["--dropout", "1"], r"--dropout"),
    (["--dropout", "-0.1"], r"--dropout"),
    (["--dropout", "nan"], r"--dropout"),
    (["--weight-decay", "-1e-2"], r"--weight-decay"),
    (["--weight-decay", "nan"], r"--weight-decay"),
])
def test_invalid_training_settings_are_usage_errors(tmp_path, args, pattern):
    proc = run_cli("train", corpus_file(tmp_path), *args, "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 2, pattern)


def test_seq_len_longer_than_a_stream(tmp_path):
    proc = run_cli("train", corpus_file(tmp_path), "--seq-len", "2000", "--batch-size", "2",
                   "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"needs at least 4002")


@pytest.mark.parametrize("args,pattern", [
    (["--temperature", "-1"], r"--temperature"),
    (["--top-k", "-2"], r"--top-k"),
    (["--length", "0"], r"--length"),
    (["--length", "-3"], r"--length"),
])
def test_invalid_sampling_settings(trained, args, pattern):
    assert_user_error(run_cli("sample", trained, *args, check=False), 2, pattern)


# -- checkpoints ----------------------------------------------------------------------------

def rewrite(src, dest, drop=(), change=None):
    arrays = dict(np.load(src, allow_pickle=False))
    for k in drop:
        arrays.pop(k)
    arrays.update(change or {})
    with open(dest, "wb") as f:
        np.savez(f, **arrays)
    return dest


def test_checkpoint_that_does_not_exist(tmp_path):
    assert_user_error(run_cli("sample", tmp_path / "nope.npz", check=False), 1, r"nope\.npz: no such checkpoint")
    assert_user_error(run_cli("info", tmp_path, check=False), 1, r"no best\.npz or last\.npz")


def test_truncated_checkpoint(trained, tmp_path):
    data = (trained / "last.npz").read_bytes()
    for cut in (10, len(data) // 3, len(data) - 30):
        p = tmp_path / f"cut{cut}.npz"
        p.write_bytes(data[:cut])
        assert_user_error(run_cli("info", p, check=False), 1, r"cut\d+\.npz: ")


def test_not_a_zip(tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("these are my notes, not a checkpoint")
    assert_user_error(run_cli("sample", p, check=False), 1, r"not a zip")


def test_checkpoint_missing_a_key(trained, tmp_path):
    p = rewrite(trained / "last.npz", tmp_path / "k.npz", drop=["rnn.weight_hh_l0"])
    assert_user_error(run_cli("sample", p, check=False), 1, r"lacks the key 'rnn\.weight_hh_l0'")


def test_checkpoint_array_of_wrong_shape_or_dtype(trained, tmp_path):
    w = np.load(trained / "last.npz")["decoder.weight"]
    p = rewrite(trained / "last.npz", tmp_path / "s.npz", change={"decoder.weight": w[:, :3]})
    assert_user_error(run_cli("info", p, check=False), 1, r"'decoder\.weight'.*expected float32")
    p = rewrite(trained / "last.npz", tmp_path / "d.npz", change={"decoder.weight": w.astype(np.float64)})
    assert_user_error(run_cli("info", p, check=False), 1, r"'decoder\.weight' is float64")


def test_checkpoint_of_unknown_format_version(trained, tmp_path):
    meta = json.loads(np.load(trained / "last.npz")["config"].item())
    meta["format_version"] = 99
    p = rewrite(trained / "last.npz", tmp_path / "v.npz", change={"config": np.array(json.dumps(meta))})
    assert_user_error(run_cli("info", p, check=False), 1,
                      r"written by a newer charlstm than this one .*format is 99.*upgrade charlstm")


@pytest.mark.parametrize("key,value", [("dropout", 1.0), ("dropout", -0.5), ("dropout", "half"),
                                       ("weight_decay", -1.0), ("weight_decay", None),
                                       ("save_every", 0), ("lr", -1.0), ("val_frac", 5.0),
                                       ("clip", float("nan")), ("lr_schedule", "cosin"),
                                       ("log_every", 0), ("steps", -3), ("encoding", "no-such"),
                                       ("momentum", float("inf")), ("time_limit", 0)])
def test_checkpoint_with_invalid_settings(trained, tmp_path, key, value):
    """Settings are checked by the one validator the command line uses too: a checkpoint
    whose configuration no CLI run could have written is refused on load, by every
    command, in one line (before, save_every 0 loaded and resume died dividing by it)."""
    meta = json.loads(np.load(trained / "last.npz")["config"].item())
    meta["hyperparameters"][key] = value
    p = rewrite(trained / "last.npz", tmp_path / "r.npz", change={"config": np.array(json.dumps(meta))})
    assert_user_error(run_cli("info", p, check=False), 1, rf"invalid {key}")


def test_resume_of_a_run_whose_checkpoint_says_save_every_0(trained, tmp_path):
    """resume, like info, refuses it in one line (it used to die dividing by zero)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    meta = json.loads(np.load(run / "last.npz")["config"].item())
    meta["hyperparameters"]["save_every"] = 0
    rewrite(trained / "last.npz", run / "last.npz", change={"config": np.array(json.dumps(meta))})
    before = (run / "last.npz").read_bytes()
    assert_user_error(run_cli("resume", run, "--steps", "5", check=False), 1,
                      r"invalid save_every: 0 \(expected an integer, at least 1\)")
    assert (run / "last.npz").read_bytes() == before


def test_the_command_line_and_the_loader_share_one_validator(tmp_path):
    """What click's option types let through is checked by the same rules (an encoding
    no codec knows, say), with the option to fix named."""
    corpus = corpus_file(tmp_path)
    proc = run_cli("train", corpus, *TINY, "--encoding", "no-such-codec", "--steps", "1",
                   "--out", tmp_path / "r", check=False)
    assert_user_error(proc, 1, r"invalid encoding: 'no-such-codec'.*fix --encoding")


@pytest.mark.parametrize("value", [0, -2, 1.5, "two", True])
def test_checkpoint_with_invalid_threads(trained, tmp_path, value):
    meta = json.loads(np.load(trained / "last.npz")["config"].item())
    meta["hyperparameters"]["threads"] = value
    p = rewrite(trained / "last.npz", tmp_path / "t.npz", change={"config": np.array(json.dumps(meta))})
    assert_user_error(run_cli("info", p, check=False), 1, r"invalid threads")


@pytest.mark.parametrize("key,value", [("blas", "cublas"), ("blas", "mkl/openblas/numpy"),
                                       ("blas", 3), ("step_weights", "transposed"),
                                       ("step_weights", "stored/sideways"), ("step_weights", None)])
def test_checkpoint_with_invalid_blas_choice(trained, tmp_path, key, value):
    meta = json.loads(np.load(trained / "last.npz")["config"].item())
    meta["hyperparameters"][key] = value
    p = rewrite(trained / "last.npz", tmp_path / "b.npz", change={"config": np.array(json.dumps(meta))})
    assert_user_error(run_cli("info", p, check=False), 1, rf"invalid {key}: .*expected")


def test_checkpoint_from_before_regularisation_options_loads(trained, tmp_path):
    """Checkpoints written before --dropout, --weight-decay, --threads and --blas existed
    lack their keys: they mean no dropout, no decay, the batch in one piece, and NumPy's
    OpenBLAS with weight_hh as stored."""
    meta = json.loads(np.load(trained / "last.npz")["config"].item())
    for key in ("dropout", "weight_decay", "threads", "blas", "step_weights"):
        del meta["hyperparameters"][key]
    p = rewrite(trained / "last.npz", tmp_path / "old.npz", change={"config": np.array(json.dumps(meta))})
    info = json.loads(run_cli("info", p, "--json").stdout)
    assert info["config"]["dropout"] == 0.0 and info["config"]["weight_decay"] == 0.0
    assert info["config"]["threads"] == 1
    assert info["config"]["blas"] == "openblas"
    assert info["config"]["step_weights"] == "stored/stored"


def test_object_arrays_are_refused_without_unpickling(trained, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arrays = dict(np.load(trained / "last.npz"))
    arrays["decoder.bias"] = np.array([Exploit()], dtype=object)
    p = tmp_path / "evil.npz"
    np.savez(p, **arrays)
    for cmd in (["info", p], ["sample", p], ["eval", p, p], ["resume", tmp_path]):
        if cmd[0] == "resume":
            p.rename(tmp_path / "last.npz")
        proc = run_cli(*cmd, check=False)
        assert_user_error(proc, 1, r"Python objects; refused")
        assert not marker.exists()


def test_huge_declared_arrays_are_refused_before_allocating(trained, tmp_path):
    # A header promising a 2 GB array in a small, highly compressed file (deflate's
    # fastest level: 10 MB, so 200 times smaller than what it declares).
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with np.load(trained / "last.npz") as z:
            for key in z.files:
                with zf.open(key + ".npy", "w", force_zip64=True) as f:
                    if key == "decoder.weight":
                        header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 29,)}
                        np.lib.format.write_array_header_1_0(f, header)
                        chunk = bytes(1 << 20)
                        for _ in range(1 << 11):
                            f.write(chunk)
                    else:
                        np.lib.format.write_array(f, z[key], allow_pickle=False)
    assert p.stat().st_size < 50 << 20
    proc = run_cli("info", p, check=False)
    assert_user_error(proc, 1, r"refused|expected")


# -- vocabulary ------------------------------------------------------------------------------

def test_prime_with_characters_outside_the_vocabulary(trained):
    proc = run_cli("sample", trained, "--prime", "the Zebra", check=False)
    assert_user_error(proc, 1, r"'Z'", r"prime")


def test_eval_file_with_unknown_characters_and_skip_unknown(trained, tmp_path):
    p = corpus_file(tmp_path, "e.txt", "the cat sat. QQ the dog ran.\n" * 20)
    assert_user_error(run_cli("eval", trained, p, check=False), 1, r"'Q'", r"--skip-unknown")
    proc = run_cli("eval", trained, p, "--skip-unknown", "--json")
    assert json.loads(proc.stdout)["chars"] == len("the cat sat.  the dog ran.\n") * 20
    assert "skipped 40 characters" in proc.stderr


# -- output directory ---------------------------------------------------------------------

def test_output_directory_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("train", corpus_file(tmp_path), *TINY, "--steps", "1", "--out", blocker / "run", check=False)
    assert_user_error(proc, 1, r"cannot write to .*run", r"--out")


def test_output_directory_with_another_run(trained, tmp_path):
    proc = run_cli("train", corpus_file(tmp_path), *TINY, "--hidden-size", "12", "--out", trained, check=False)
    assert_user_error(proc, 1, r"already holds a run", r"charlstm resume", r"--force")


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "train", tmp_path / "missing.txt", check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
