"""Outside the happy path, on the real CLI: a token cache that is damaged or keyed by a
path's spelling, runs started at the same moment, encoding advice that would garble
text, messages that state what is not so, files saved by editors, and checkpoints
damaged by a crash."""
import json
import subprocess

import numpy as np
import pytest

from conftest import CHARLSTM, assert_same_future, make_text, run_cli

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--blas", "openblas", "--step-weights", "stored/stored", "--quiet"]


def notes(proc) -> list:
    return [line for line in proc.stderr.splitlines() if line.startswith("Note: ")]


def one_error_line(proc, code=1) -> str:
    """The single `Error: ...` line of a refused command (no traceback)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


# -- the token cache ------------------------------------------------------------------------

def _entry(run_dir):
    """The token cache entry of ``run_dir``: (.npy path, .json path)."""
    npy = sorted((run_dir / "tokens").glob("*.npy"))
    assert len(npy) == 1, npy
    return npy[0], npy[0].with_suffix(".json")


def test_the_first_resume_maps_the_cache_train_wrote(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000))
    run = tmp_path / "run"
    run_cli("train", corpus, *TINY, "--steps", "2", "--out", run)  # an absolute corpus path
    npy, meta = _entry(run)
    written = (npy.name, npy.stat().st_ino, meta.stat().st_ino)
    resumed = run_cli("resume", run, "--steps", "4")
    assert not notes(resumed), resumed.stderr
    npy, meta = _entry(run)
    assert (npy.name, npy.stat().st_ino, meta.stat().st_ino) == written  # read, not written again


def _zero_ids(npy, meta):
    length = json.loads(meta.read_text())["length"]
    data = bytearray(npy.read_bytes())
    data[len(data) - length:] = bytes(length)  # the ids only: the header still reads
    npy.write_bytes(bytes(data))


def _cut(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _replace_ids(npy, meta):
    ids = np.load(npy)
    np.save(npy, np.roll(ids, 1))  # a valid array of the right length: someone else's


DAMAGE = {
    "ids zeroed": _zero_ids,
    "ids cut short": lambda npy, meta: _cut(npy),
    "ids replaced": _replace_ids,
    "ids missing": lambda npy, meta: npy.unlink(),
    "description cut short": lambda npy, meta: _cut(meta),
    "description emptied": lambda npy, meta: meta.write_bytes(b""),
    "description zero-filled": lambda npy, meta: meta.write_bytes(bytes(meta.stat().st_size)),
}


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    """A corpus (given as a relative path, from its directory) and a run of 4 steps."""
    tmp = tmp_path_factory.mktemp("undamaged")
    (tmp / "c.txt").write_text(make_text(5000, seed=2))
    run_cli("train", "c.txt", *TINY, "--steps", "4", "--out", "whole", cwd=tmp)
    return tmp


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_token_cache_is_rebuilt_never_trained_on(undamaged, damage):
    run = undamaged / damage.replace(" ", "-")
    run_cli("train", "c.txt", *TINY, "--steps", "2", "--out", run, cwd=undamaged)
    DAMAGE[damage](*_entry(run))
    resumed = run_cli("resume", run, "--steps", "4", cwd=undamaged)
    said = notes(resumed)
    assert len(said) == 1 and "token cache" in said[0] and "damaged" in said[0], resumed.stderr
    assert_same_future(undamaged / "whole" / "last.npz", run / "last.npz")
    again = run_cli("resume", run, "--steps", "5", cwd=undamaged)  # the entry was rewritten
    assert not notes(again), again.stderr


# -- default run names ----------------------------------------------------------------------

def test_runs_started_at_the_same_moment_get_directories_of_their_own(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(3000))
    procs = [subprocess.Popen([*CHARLSTM, "train", "c.txt", *TINY, "--steps", "1"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 6 and all((r / "last.npz").is_file() for r in runs), runs


# -- checkpoints: written by a newer charlstm, damaged after a crash ------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 3 steps with last.npz and best.npz; tests damage copies of it."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "c.txt").write_text(make_text(5000, seed=3))
    run_cli("train", tmp / "c.txt", *TINY, "--steps", "3", "--eval-every", "1", "--out", tmp / "run")
    return tmp / "run"


def _with_meta(src, dest, **changes):
    arrays = dict(np.load(src, allow_pickle=False))
    meta = json.loads(arrays["config"].item())
    for key, value in changes.items():
        if key == "hyperparameters":
            meta[key].update(value)
        else:
            meta[key] = value
    arrays["config"] = np.array(json.dumps(meta))
    with open(dest, "wb") as f:
        np.savez(f, **arrays)
    return dest


def test_a_checkpoint_from_a_newer_charlstm_says_upgrade(finished, tmp_path):
    newer_format = _with_meta(finished / "last.npz", tmp_path / "f.npz",
                              charlstm_version="9.1.0", format_version=3)
    line = one_error_line(run_cli("info", newer_format, check=False))
    assert "written by charlstm 9.1.0, newer than this one" in line and "upgrade charlstm" in line
    assert "not supported" not in line
    new_setting = _with_meta(finished / "last.npz", tmp_path / "s.npz", charlstm_version="0.2.0",
                             hyperparameters={"attention_heads": 4})
    line = one_error_line(run_cli("sample", new_setting, check=False))
    assert "written by charlstm 0.2.0, newer than this one" in line and "attention_heads" in line
    assert "unreadable" not in line


def _damaged_copy(finished, tmp_path, damage):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.npz", "best.npz"):
        (run / name).write_bytes((finished / name).read_bytes())
    data = (run / "last.npz").read_bytes()
    (run / "last.npz").write_bytes(damage(data))
    return run


CRASHES = {
    "cut short": lambda data: data[:len(data) * 2 // 3],
    "cut at its last byte": lambda data: data[:-1],
    "zero-filled tail": lambda data: data[:len(data) // 2] + bytes(len(data) - len(data) // 2),
    "all zeros": lambda data: bytes(len(data)),
    "empty": lambda data: b"",
    "a zero-filled page inside": lambda data: data[:4096] + bytes(4096) + data[8192:],
}


@pytest.mark.parametrize("crash", CRASHES)
def test_a_checkpoint_damaged_by_a_crash_names_the_intact_one(finished, tmp_path, crash):
    run = _damaged_copy(finished, tmp_path, CRASHES[crash])
    line = one_error_line(run_cli("resume", run, "--steps", "9", check=False))
    assert f"{run / 'last.npz'}: the file is damaged" in line, line
    assert f"{run / 'best.npz'} (step 3) is intact" in line and f"cp {run / 'best.npz'}" in line
    (run / "best.npz").write_bytes(b"")
    line = one_error_line(run_cli("sample", run, check=False))
    assert f"{run / 'best.npz'}: the file is damaged: it is empty" in line
    assert "no other checkpoint beside it is intact" in line  # last.npz is damaged too


def test_a_checkpoint_cut_or_zeroed_at_any_byte_is_one_named_error(finished, tmp_path):
    from charlstm.model import checkpoint as ckpt_io

    data = (finished / "last.npz").read_bytes()
    path = tmp_path / "last.npz"
    (tmp_path / "best.npz").write_bytes((finished / "best.npz").read_bytes())
    stride = max(1, len(data) // 120)
    # Every byte of the zip headers at both ends (where a stride would land by chance,
    # depending on the paths recorded in the file), and a stride through the arrays.
    edges = [*range(64), *range(len(data) - 120, len(data))]
    for start in sorted({*edges, *range(0, len(data), stride)}):
        for damaged in (data[:start], data[:start] + bytes(len(data) - start),
                        data[:start] + bytes(8) + data[start + 8:]):
            if damaged == data:
                continue
            path.write_bytes(damaged)
            try:
                ckpt = ckpt_io.load(path)
            except ckpt_io.CheckpointError as e:
                message = str(e)
                assert message.startswith(f"{path}: the file is damaged: ") and "\n" not in message, message
                assert f"{tmp_path / 'best.npz'} (step 3) is intact" in message, message
            else:  # the zeros fell on bytes that were zeros already, or unused ones
                assert np.array_equal(ckpt.params.flat, ckpt_io.load(finished / "last.npz").params.flat)


# -- configuration files as editors save them -----------------------------------------------

RUN_FILE = ('[train]\ncorpus = ["c.txt"]\nhidden_size = 8\nnum_layers = 1\nseq_len = 8\n'
            'batch_size = 2\nsteps = 0\nblas = "openblas"\nstep_weights = "stored/stored"\n')
SWEEP_FILE = RUN_FILE + '\n[grid]\nlr = [0.01, 0.002]\n\n[sweep]\nout = "sweeps/s"\n'

SAVED_AS = {
    "UTF-8 with a byte-order mark": lambda text: b"\xef\xbb\xbf" + text.encode("utf-8"),
    "CRLF line endings": lambda text: text.replace("\n", "\r\n").encode("utf-8"),
    "UTF-16 with a byte-order mark": lambda text: text.encode("utf-16"),
    "UTF-32 with a byte-order mark": lambda text: text.encode("utf-32"),
    "no newline at the end": lambda text: text.rstrip("\n").encode("utf-8"),
    "tabs": lambda text: text.replace(" = ", "\t=\t").replace("\n[", "\n\t[").encode("utf-8"),
    "CR line endings": lambda text: text.replace("\n", "\r").encode("utf-8"),
    "BOM, CRLF, no newline at the end":
        lambda text: b"\xef\xbb\xbf" + text.replace("\n", "\r\n").rstrip().encode("utf-8"),
}


@pytest.mark.parametrize("saved_as", SAVED_AS)
def test_configuration_files_saved_by_editors_are_read(tmp_path, saved_as):
    (tmp_path / "c.txt").write_text(make_text(3000))
    (tmp_path / "run.toml").write_bytes(SAVED_AS[saved_as](RUN_FILE))
    (tmp_path / "sweep.toml").write_bytes(SAVED_AS[saved_as](SWEEP_FILE))
    run_cli("train", "--config", "run.toml", "--out", "run", "--quiet", cwd=tmp_path)
    assert json.loads(run_cli("info", tmp_path / "run", "--json").stdout)["config"]["hidden_size"] == 8
    trials = run_cli("sweep", "sweep.toml", "--dry-run", cwd=tmp_path).stdout
    assert trials.count("trial-") == 2, trials


UNREADABLE = {
    "UTF-16 without a byte-order mark": (lambda text: text.encode("utf-16-le"),
                                         r"is UTF-16 without a byte-order mark; save it as UTF-8"),
    "a tail of zeros": (lambda text: text.encode("utf-8") + bytes(300),
                        r"ends in 300 zero bytes.*save it again"),
    "cp1252": (lambda text: text.replace("c.txt", "caf\u00e9.txt").encode("cp1252"),
               r"not UTF-8 at byte \d+ \(it reads as cp1252\).*iconv -f cp1252 -t utf-8"),
    "a Windows path": (lambda text: text.replace('"c.txt"', r'"C:\data\c.txt"').encode("utf-8"),
                       r"Unescaped.*write Windows paths in 'single quotes'"),
    "smart quotes": (lambda text: text.replace('"c.txt"', "\u201cc.txt\u201d").encode("utf-8"),
                     r"typographic quotes \u201c\u201d.*TOML needs straight"),
    "a non-breaking space": (lambda text: text.replace("hidden_size =", "hidden_size\u00a0=").encode("utf-8"),
                             r"non-breaking or full-width space where TOML needs a plain space"),
    "an option's name with dashes": (lambda text: text.replace("hidden_size", "hidden-size").encode("utf-8"),
                                     r"unknown key 'hidden-size'; write it hidden_size"),
    "a Windows path that escapes change": (
        lambda text: text.replace('"c.txt"', r'"C:\temp\new.txt"').encode("utf-8"),
        r"holds 'C:\\temp\\new\.txt'.*write Windows paths in 'single quotes'"),
}


@pytest.mark.parametrize("saved_as", UNREADABLE)
def test_a_configuration_file_that_cannot_be_read_is_one_line_naming_the_fix(tmp_path, saved_as):
    import re

    save, message = UNREADABLE[saved_as]
    (tmp_path / "c.txt").write_text(make_text(3000))
    for name, text, command in (("run.toml", RUN_FILE, ("train", "--config")),
                                ("sweep.toml", SWEEP_FILE, ("sweep", "--dry-run"))):
        (tmp_path / name).write_bytes(save(text))
        line = one_error_line(run_cli(*command, name, cwd=tmp_path, check=False))
        assert re.search(message, line), (message, line)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command, text, message", [
    (("sweep", "--dry-run"), 'out = "sweeps/s"\n' + RUN_FILE + '[grid]\nlr = [0.1]\n',
     "key 'out' is outside every table (keys above the first [table] line are in none); "
     "move it under [sweep]"),
    (("sweep", "--dry-run"), RUN_FILE + 'out = "sweeps/s"\n[grid]\nlr = [0.1]\n',
     "[train]: key 'out' belongs in [sweep]; move it there"),
    (("sweep", "--dry-run"), RUN_FILE + '[grid]\nlr = [0.1]\n[sweep]\nhidden_size = 3\n',
     "'hidden_size' belongs in [train] (one value) or [grid] (a list of values)"),
    (("train", "--config"), "hidden_size = 8\n" + RUN_FILE,
     "key 'hidden_size' is outside every table (keys above the first [table] line are in none); "
     "move it under [train]"),
    (("train", "--config"), SWEEP_FILE,
     "unknown table [grid]; a run configuration file has one table, [train] (a sweep file: "
     "run it with `charlstm sweep FILE`)"),
], ids=["sweep: out above every table", "sweep: out in [train]", "sweep: a train option in [sweep]",
        "train: an option above [train]", "train: a sweep file"])
def test_a_key_outside_its_table_is_told_where_it_belongs(tmp_path, command, text, message):
    (tmp_path / "c.txt").write_text(make_text(3000))
    (tmp_path / "f.toml").write_text(text)
    line = one_error_line(run_cli(*command, "f.toml", cwd=tmp_path, check=False))
    assert message in line, line


# -- encoding advice ------------------------------------------------------------------------

FRENCH = "Le caf\u00e9 est tr\u00e8s bon, na\u00efve \u00e9l\u00e8ve \u00e0 l'\u00e9cole. \u201cOui\u201d \u2013 d\u00e9j\u00e0 vu\u2026\n"


def _advice(proc) -> str:
    line = one_error_line(proc)
    assert "pass --encoding" not in line, line
    return line


def _follow(command: str, cwd):
    """Run the shell command an error message gave, as the user would paste it."""
    subprocess.run(command, shell=True, cwd=cwd, check=True)


def _trained_text_chars(run_dir) -> set:
    vocab = np.load(run_dir / "last.npz", allow_pickle=False)["vocab"]
    return {chr(int(c)) for c in vocab}


def test_a_folder_mixing_utf8_and_cp1252_is_told_to_convert_the_cp1252_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes((make_text(3000) + FRENCH * 5).encode("utf-8"))
    (corpus / "b.txt").write_bytes((make_text(3000, seed=1) + FRENCH * 5).encode("cp1252"))
    line = _advice(run_cli("train", "corpus", *TINY, "--steps", "1", "--out", "r", cwd=tmp_path,
                           check=False))
    assert "corpus/b.txt: not valid utf-8 at byte 3006: it reads as cp1252" in line, line
    assert "corpus/a.txt is UTF-8, which --encoding cp1252 would garble ('\u00e9' would read as '\u00c3\u00a9')" in line
    _follow(line.split("e.g. ")[1], tmp_path)
    run_cli("train", "corpus", *TINY, "--steps", "1", "--out", "r", cwd=tmp_path)
    chars = _trained_text_chars(tmp_path / "r")
    assert set(FRENCH) <= chars and "\u00c3" not in chars  # what was written, no mojibake


def test_several_files_that_are_not_utf8_in_one_encoding_or_two(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text(make_text(3000))  # ASCII reads the same in cp1252
    (one / "b.txt").write_bytes((make_text(3000) + FRENCH * 5).encode("cp1252"))
    line = one_error_line(run_cli("train", one, *TINY, "--steps", "1", "--out", tmp_path / "r",
                                  check=False))
    assert "(its bytes read best as --encoding cp1252); all files must share one encoding" in line
    run_cli("train", one, *TINY, "--steps", "1", "--encoding", "cp1252", "--out", tmp_path / "r")
    assert set(FRENCH) <= _trained_text_chars(tmp_path / "r")
    two = tmp_path / "two"
    two.mkdir()
    (two / "b.txt").write_bytes((make_text(3000) + FRENCH * 5).encode("cp1252"))
    (two / "c.txt").write_bytes((make_text(3000) + "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440, "
                                 "\u044d\u0442\u043e \u0440\u0443\u0441\u0441\u043a\u0438\u0439 "
                                 "\u0442\u0435\u043a\u0441\u0442.\n" * 5).encode("cp1251"))
    line = _advice(run_cli("train", two, *TINY, "--steps", "1", "--out", tmp_path / "r2", check=False))
    assert f"{two / 'b.txt'} (cp1252) and {two / 'c.txt'} (cp1251)" in line, line


def test_a_utf8_file_cut_inside_a_character_is_called_that(tmp_path):
    whole = (make_text(3000) + FRENCH * 5).encode("utf-8")
    (tmp_path / "whole.txt").write_bytes(whole)
    subprocess.run(f"head -c {len(whole) - 2} whole.txt > cut.txt", shell=True, cwd=tmp_path, check=True)
    line = _advice(run_cli("train", "cut.txt", *TINY, "--steps", "1", "--out", "r", cwd=tmp_path,
                           check=False))
    assert line.startswith("Error: cut.txt: cut off inside a character: its last 2 bytes are the "
                           "start of a utf-8 character"), line
    _follow(line.split("(")[-1].rstrip(")"), tmp_path)  # truncate -s -2 cut.txt
    run_cli("train", "cut.txt", *TINY, "--steps", "1", "--out", "r", cwd=tmp_path)
    assert "\u00c3" not in _trained_text_chars(tmp_path / "r")


def test_a_file_mixing_utf8_and_cp1252_is_never_told_one_encoding(tmp_path):
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes((make_text(3000) + FRENCH * 5).encode("utf-8") + (FRENCH * 5).encode("cp1252"))
    line = _advice(run_cli("train", mixed, *TINY, "--steps", "1", "--out", tmp_path / "r", check=False))
    assert "mixes UTF-8 with text in another encoding (the bytes there read as cp1252)" in line, line


def test_a_damaged_best_is_not_called_a_change_of_text(finished, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.npz", "metrics.jsonl"):
        (run / name).write_bytes((finished / name).read_bytes())
    (run / "best.npz").write_bytes((finished / "best.npz").read_bytes()[:1000])
    (tmp_path / "c.txt").write_bytes((finished.parent / "c.txt").read_bytes())
    said = notes(run_cli("resume", run, "--steps", "4", cwd=tmp_path))
    assert said == [f"Note: {run / 'best.npz'} cannot be read (`charlstm info "
                    f"{run / 'best-before-step-3.npz'}` says why): the best-so-far restarts, and "
                    f"the file is kept as {run / 'best-before-step-3.npz'}"], said


def test_a_walk_leaves_out_editor_backups_and_says_so(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    (book / "ch1.txt").write_text(make_text(3000))
    (book / "ch1.txt~").write_text(make_text(3000, seed=4))  # the version before the last save
    (book / "#ch2.txt#").write_text(make_text(3000, seed=5))  # Emacs's autosave
    proc = run_cli("train", book, *TINY[:-1], "--steps", "1", "--val-frac", "0", "--out", tmp_path / "r")
    assert f"Note: skipped {book / 'ch1.txt~'}: an editor's backup" in proc.stderr, proc.stderr
    assert f"Note: skipped {book / '#ch2.txt#'}: an editor's backup" in proc.stderr
    assert "3,000 training" in proc.stderr  # ch1.txt alone
    named = run_cli("train", book / "ch1.txt~", *TINY, "--steps", "1", "--out", tmp_path / "r2")
    assert "skipped" not in named.stderr  # a path named directly is read


def test_an_encoding_that_misreads_utf8_files_is_not_silent(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes((make_text(3000) + "caf\u00e9 tr\u00e8s\n" * 5).encode("utf-8"))
    (corpus / "b.txt").write_bytes((make_text(3000) + "caf\u00e9 tr\u00e8s\n" * 5).encode("cp1252"))
    proc = run_cli("train", corpus, *TINY, "--steps", "1", "--encoding", "cp1252", "--out", tmp_path / "r")
    assert notes(proc) == [f"Note: {corpus / 'a.txt'} is valid UTF-8, which --encoding cp1252 reads "
                           f"as other characters ('\u00e9' as '\u00c3\u00a9'): if it is UTF-8, convert the "
                           f"files that are not to UTF-8 (iconv -f cp1252 -t utf-8) and drop --encoding"], proc.stderr
    (corpus / "a.txt").write_bytes((make_text(3000) + "caf\u00e9 tr\u00e8s\n" * 5).encode("cp1252"))
    proc = run_cli("train", corpus, *TINY, "--steps", "1", "--encoding", "cp1252", "--out", tmp_path / "r2")
    assert not notes(proc), proc.stderr  # every file in the encoding asked for
