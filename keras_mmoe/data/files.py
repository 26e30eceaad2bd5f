"""The files a spec names: glob patterns, formats (CSV, TFRecord), compression, CSV headers.

Pure Python (no TensorFlow). ``.gz`` files are gzip-compressed; ``.tfrecord`` / ``.tfrecords`` /
``.tfrec`` (optionally ``.gz``) are TFRecord files of ``tf.train.Example``; every other name is CSV
with a header line (``format`` in the spec overrides the guess).
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import os
import zlib
from typing import IO, Iterable, Iterator, List, Optional, Sequence, Tuple

_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")


def resolve_patterns(patterns: Sequence[str], base_dir: str = ".", what: str = "files") -> list:
    """Expands glob patterns (relative to ``base_dir``) into a sorted list of files, each once.

    Raises ``FileNotFoundError`` naming the first pattern that matches no file.
    """
    files = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else os.path.normpath(os.path.join(base_dir, pattern))
        matches = sorted(p for p in glob.glob(full) if os.path.isfile(p))
        if not matches:
            shown = pattern if full == pattern else f"{pattern} ({full})"
            raise FileNotFoundError(f"{what}: the pattern {shown} matches no file")
        for m in matches:
            if m not in files:
                files.append(m)
    return files


def is_gzip(path: str) -> bool:
    return path.endswith(".gz")


def compression_type(path: str) -> str:
    """TensorFlow's ``compression_type`` of ``path``: ``"GZIP"`` or ``""``."""
    return "GZIP" if is_gzip(path) else ""


def guess_format(path: str) -> str:
    """``"tfrecord"`` or ``"csv"`` from the file name."""
    name = path[:-3] if is_gzip(path) else path
    return "tfrecord" if name.endswith(_TFRECORD_SUFFIXES) else "csv"


def files_format(files: Sequence[str], declared: Optional[str] = None, what: str = "files") -> str:
    """The one format of ``files`` (the declared one, else guessed; mixing formats is an error)."""
    if declared:
        return declared
    formats = {f: guess_format(f) for f in files}
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        example = {k: next(f for f, v in formats.items() if v == k) for k in kinds}
        raise ValueError(f"{what}: mixes CSV and TFRecord files ({example['csv']}, {example['tfrecord']}); "
                         "use one format per file list or set `format` in [data]")
    return kinds[0]


def open_text(path: str) -> IO[str]:
    """A text stream of ``path`` (gzip-decompressed for ``.gz``), UTF-8, universal newlines off."""
    raw = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def read_header(path: str, delimiter: str = ",") -> list:
    """The column names of the CSV file ``path`` (its first line)."""
    try:
        with open_text(path) as f:
            line = f.readline()
    except (OSError, EOFError) as error:
        raise OSError(f"{path}: cannot read the header line: {error}") from None
    if not line.strip():
        raise ValueError(f"{path}: line 1: the file has no header line (it is empty)")
    return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter))


def common_header(files: Sequence[str], delimiter: str = ",") -> list:
    """The header shared by every CSV file in ``files``; a file with another header is an error."""
    first = read_header(files[0], delimiter)
    duplicates = sorted({c for c in first if first.count(c) > 1})
    if duplicates:
        raise ValueError(f"{files[0]}: line 1: the header names the column(s) {duplicates} more than once")
    for path in files[1:]:
        header = read_header(path, delimiter)
        if header != first:
            raise ValueError(
                f"{path}: line 1: the header differs from {files[0]}'s "
                f"({_header_difference(first, header)}); every file of a list needs the same columns in the same order"
            )
    return first


def _header_difference(expected, received):
    missing = [c for c in expected if c not in received]
    extra = [c for c in received if c not in expected]
    if missing or extra:
        return f"missing {missing}, extra {extra}"
    return f"order {received} instead of {expected}"


def csv_rows(files: Iterable[str], delimiter: str = ",",
             limit: Optional[int] = None) -> Iterator[Tuple[str, int, List[str], List[str]]]:
    """Yields ``(path, line number, header, row)`` of CSV data rows (Python ``csv``; for sampling)."""
    count = 0
    for path in files:
        with open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                continue
            for row in reader:
                if not row:
                    continue
                yield path, reader.line_num, header, row
                count += 1
                if limit is not None and count >= limit:
                    return


def read_vocabulary_file(path: str, dtype: str = "string") -> list:
    """The tokens of a vocabulary file, one a line, in order (empty lines and duplicates dropped)."""
    tokens, seen = [], set()
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            token = line.rstrip("\r\n")
            if not token:
                continue
            if dtype == "int64":
                try:
                    token = int(token)
                except ValueError:
                    raise ValueError(f"{path}: line {number}: {token!r} is not an integer id") from None
            if token not in seen:
                seen.add(token)
                tokens.append(token)
    if not tokens:
        raise ValueError(f"{path}: the vocabulary file holds no token")
    return tokens


def verify_gzip(path: str, chunk_size: int = 1 << 20) -> None:
    """Decompresses ``path`` to the end (discarding the output, in bounded pieces): raises
    ``ValueError`` if the gzip stream is truncated or corrupted. TensorFlow's readers stop silently
    at a truncated gzip stream, which would lose rows without a word; the statistics pass runs this."""
    decompressor = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(chunk_size)
                if not data:
                    break
                while data:
                    if decompressor.eof:  # the previous gzip member ended: the next one starts
                        decompressor = zlib.decompressobj(wbits=31)
                    decompressor.decompress(data, chunk_size)
                    data = decompressor.unconsumed_tail or (decompressor.unused_data if decompressor.eof else b"")
        if not decompressor.eof:
            raise EOFError("the gzip stream ends before its end marker")
    except zlib.error as error:
        raise ValueError(f"{path}: the file is corrupted ({error})") from None
    except EOFError as error:
        raise ValueError(f"{path}: the file is truncated ({error})") from None
