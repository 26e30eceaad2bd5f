"""Fetching and verifying gzip data files: download to a temporary file, check, then rename.

A file enters the cache only after its *decompressed* content matched the expected sha256
(and byte count), so an interrupted, truncated or corrupted download leaves nothing behind.
Files already in the cache are verified the same way whenever they are read in full.
"""

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Optional


class CorruptFileError(OSError):
    """A data file is not valid gzip, is truncated, or its content checksum does not match."""


def read_gzip_verified(
    path: str, expected_sha256: str, expected_size: Optional[int] = None, what: Optional[str] = None
) -> bytes:
    """Decompresses the whole gzip file ``path`` and returns its bytes after checking them.

    Args:
        path: the ``.gz`` file.
        expected_sha256: hex sha256 of the decompressed content.
        expected_size: optional byte count of the decompressed content.
        what: how to name the file in errors (default: ``path``).

    Raises:
        CorruptFileError: the file is not gzip, is truncated or corrupted (gzip CRC / length
            check), or the decompressed content's size or sha256 differs from the expected one.
            The message names the file and gives the expected and received values.
    """
    what = what or path
    with open(path, "rb") as f:
        compressed = f.read()
    try:
        content = gzip.decompress(compressed)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise CorruptFileError(
            f"{what} is truncated or not a valid gzip file ({len(compressed):,} bytes on disk; "
            f"{type(exc).__name__}: {exc}); expected gzip content with sha256 {expected_sha256}"
            + (f" ({expected_size:,} bytes)" if expected_size is not None else "")
        ) from exc
    if expected_size is not None and len(content) != expected_size:
        raise CorruptFileError(
            f"{what} has the wrong decompressed size: expected {expected_size:,} bytes, "
            f"received {len(content):,} bytes (content sha256 {hashlib.sha256(content).hexdigest()}, "
            f"expected {expected_sha256})"
        )
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected_sha256:
        raise CorruptFileError(
            f"{what} has the wrong content checksum: expected sha256 {expected_sha256}, received {digest} "
            f"({len(content):,} decompressed bytes)"
        )
    return content


def download_verified(
    url: str, destination: str, expected_sha256: str, expected_size: Optional[int] = None, timeout: float = 60
) -> bytes:
    """Downloads ``url`` to ``destination`` only if its decompressed content checks out.

    The bytes go to a temporary file in the destination's directory, are verified with
    :func:`read_gzip_verified`, then atomically renamed to ``destination``; on any failure the
    temporary file is removed and nothing is left in the cache. ``url`` may be ``http(s)://``
    or ``file://``.

    Returns:
        the decompressed content (bytes), so the caller need not read the file again.

    Raises:
        OSError: the download failed (the message names the URL).
        CorruptFileError: the downloaded file failed verification.
    """
    directory = os.path.dirname(os.path.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(destination) + ".", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, out, length=1 << 20)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise OSError(f"Downloading {url} to {destination} failed: {exc}") from exc
        content = read_gzip_verified(
            tmp_path, expected_sha256, expected_size, what=f"{os.path.basename(destination)} downloaded from {url}"
        )
        os.replace(tmp_path, destination)
        return content
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
