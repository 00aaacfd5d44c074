"""A second, plain corpus reader, kept only as a test oracle for charlstm's one reader
(corpus.decoded_blocks through tokens.load_corpus): every file read whole and decoded in
one call, no blocks, no cache. Same resolution of paths and built-in corpora."""
import hashlib
from dataclasses import dataclass

from charlstm.data.corpus import CorpusFile, builtin_corpus, resolve_paths


@dataclass
class PlainCorpus:
    text: str
    files: list


def read_whole(specs, encoding: str = "utf-8") -> PlainCorpus:
    """The text and files of ``specs`` (no specs: the built-in corpus), decoded whole and
    joined as the README's data layout says. Raises UnicodeDecodeError for bytes the
    encoding cannot decode."""
    builtin = builtin_corpus(specs)
    if builtin is not None:
        name, text = builtin
        return PlainCorpus(text, [CorpusFile(name, hashlib.sha256(text.encode("utf-8")).hexdigest())])
    parts, files = [], []
    for path in resolve_paths(specs):
        data = path.read_bytes()
        codec = encoding
        if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            # A UTF-16/32 byte-order mark names the file's encoding (README, --encoding).
            for bom, name in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                              (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
                if data.startswith(bom):
                    codec = name
                    break
        text = data.decode(codec)
        text = text[1:] if text.startswith("\ufeff") else text
        if text:
            parts.append(text)
        files.append(CorpusFile(str(path), hashlib.sha256(data).hexdigest()))
    # Files are joined with a newline after each one that lacks one, the last excepted.
    joined = "".join(part if part.endswith("\n") or i == len(parts) - 1 else part + "\n"
                     for i, part in enumerate(parts))
    return PlainCorpus(joined, files)
