"""A second, plain corpus reader, kept only as a test oracle for charlstm's one reader
(corpus.decoded_blocks through tokens.load_corpus): every file read whole and decoded in
one call, no blocks, no cache. Same resolution of paths and built-in corpora."""
import hashlib
from dataclasses import dataclass

from charlstm.corpus import CorpusFile, builtin_corpus, resolve_paths


@dataclass
class PlainCorpus:
    text: str
    files: list


def read_whole(specs, encoding: str = "utf-8") -> PlainCorpus:
    """The text and files of ``specs`` (no specs: the built-in corpus), decoded whole.
    Raises UnicodeDecodeError for bytes the encoding cannot decode."""
    builtin = builtin_corpus(specs)
    if builtin is not None:
        name, text = builtin
        return PlainCorpus(text, [CorpusFile(name, hashlib.sha256(text.encode("utf-8")).hexdigest())])
    parts, files = [], []
    for path in resolve_paths(specs):
        data = path.read_bytes()
        text = data.decode(encoding)
        parts.append(text[1:] if text.startswith("\ufeff") else text)
        files.append(CorpusFile(str(path), hashlib.sha256(data).hexdigest()))
    return PlainCorpus("".join(parts), files)
