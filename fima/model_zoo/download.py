"""Downloads into a cache: stream a URL into a file that exists only once it is complete.

A file is written to a hidden temporary file beside its final name and renamed only after the
announced length (and, for a model-zoo file, the sha256; given a content check, the kind of file)
check out (:func:`fima.checkpoint.atomic_write`), so the cache never holds a partial or tampered
file, whatever happens during the download. A cached model-zoo file is verified again before
every use; one that no longer matches is deleted and fetched anew. A plain URL, whose sha256 is
unknown, is downloaded once (:func:`download_cached`).

A killed download leaves its temporary file, named after the host and process that wrote it;
the next download of that file removes those of processes that are gone
(:func:`remove_stale_downloads`), never one that another process is still writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import BinaryIO

from fima.checkpoint.checkpointer import atomic_write
from fima.utils.progress import progress_bar

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
# A temporary file not written for this long is a stale one whoever wrote it (another machine
# sharing the cache, an older fima whose temporary names say no process): a live download
# writes at least every timeout.
STALE_AFTER_S = 24 * 3600.0
# What atomic_write(tag=_writer_tag()) names a download's temporary file: the name, "dl",
# the host, the pid, mkstemp's random part.
_TEMP = re.compile(r"^\.(?P<name>.+)\.dl-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.\w+\.tmp$")
_UNTAGGED_TEMP = re.compile(r"^\.(?P<name>.+)\.\w+\.tmp$")


class DownloadError(OSError):
    """A download that did not produce the expected file (network error, timeout, bad content)."""


class ChecksumError(DownloadError):
    """Downloaded content that is truncated, whose sha256 differs from the expected one, or that
    is not what was asked for (a web page instead of a checkpoint)."""


# Says why the content of an open file is not what a download should give, or None if it is
# (e.g. fima.checkpoint.checkpointer.torch_file_problem).
ContentCheck = Callable[[BinaryIO], str | None]


def download_timeout() -> float:
    """Seconds a download waits for the server to connect or send more data:
    ``$FIMA_DOWNLOAD_TIMEOUT``, default 60.

    Raises:
        DownloadError: the variable is not a positive number, so no download is attempted (a
            DownloadError, so that the tools say it in one line as any failed download).
    """
    value = os.environ.get("FIMA_DOWNLOAD_TIMEOUT", "")
    try:
        timeout = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        timeout = float("nan")
    if not 0 < timeout < math.inf:
        raise DownloadError(
            f"FIMA_DOWNLOAD_TIMEOUT must be a finite number of seconds > 0, got {value!r}"
        )
    return timeout


def _host() -> str:
    """This host as processes sharing its pids see it: the host name and, on Linux, the pid
    namespace (containers that share a host name do not see each other's processes)."""
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        host += "-ns" + os.readlink("/proc/self/ns/pid").strip("pid:[]")
    return re.sub(r"[^A-Za-z0-9-]", "-", host)


def _writer_tag() -> str:
    """What a download's temporary file is tagged with: host and pid (see :data:`_TEMP`)."""
    return f"dl-{_host()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_downloads(path: str, stale_after: float = STALE_AFTER_S) -> list[str]:
    """Remove the temporary files that killed downloads of ``path`` left beside it: those of a
    process of this host that is gone, and any not written for ``stale_after`` seconds. A
    download in progress (this process's, another live process's, or recent on another host)
    is left alone.

    Returns:
        The paths removed.
    """
    directory, name = os.path.split(os.path.abspath(path))
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    host, removed = _host(), []
    for entry in entries:
        match = _TEMP.match(entry) or _UNTAGGED_TEMP.match(entry)
        if match is None or match.group("name") != name:
            continue
        # The process that wrote it, where this host can tell whether it still runs.
        pid = int(match.group("pid")) if match.re is _TEMP and match["host"] == host else None
        temp = os.path.join(directory, entry)
        try:
            gone = pid is not None and pid != os.getpid() and not _pid_alive(pid)
            if gone or time.time() - os.path.getmtime(temp) > stale_after:
                os.unlink(temp)
                removed.append(temp)
        except OSError:  # removed meanwhile by another process cleaning up
            continue
    if removed:
        logger.info("Removed what killed downloads of %s left: %s", path, ", ".join(removed))
    return removed


def file_sha256(path: str) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, sha256: str | None, timeout: float, out: BinaryIO) -> None:
    """Write the body of ``url`` to ``out``; raise unless it is complete and matches ``sha256``
    (when given)."""
    digest, received, total, answered = hashlib.sha256(), 0, None, False
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answered = True
            announced = response.headers.get("Content-Length")
            total = int(announced) if announced is not None else None
            bar = progress_bar(desc=os.path.basename(url), total=total, unit="B", unit_scale=True)
            with bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except TimeoutError as err:
        raise DownloadError(
            f"Download of {url} timed out: no data for {timeout:g} s (set "
            "FIMA_DOWNLOAD_TIMEOUT to wait longer)"
        ) from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise DownloadError(
                f"Download of {url} timed out: no answer within {timeout:g} s (set "
                "FIMA_DOWNLOAD_TIMEOUT to wait longer)"
            ) from err
        raise DownloadError(f"Cannot download {url}: {err}") from err
    except (http.client.HTTPException, ConnectionError) as err:
        # urllib raises these unwrapped: a connection closed or reset while the body streams
        # (IncompleteRead, ECONNRESET), or a server that hangs up or does not speak HTTP before
        # its answer (RemoteDisconnected, BadStatusLine). A body cut short is a truncated
        # download, retried like one.
        if isinstance(err, http.client.IncompleteRead):
            reason = "the server closed the connection"
        else:
            reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        if answered:
            of_total = f" of the {total}" if total is not None else ""
            raise ChecksumError(
                f"Download of {url} is truncated: the connection ended after {received}"
                f"{of_total} bytes ({reason})"
            ) from err
        raise DownloadError(f"Cannot download {url}: {reason}") from err
    if total is not None and received != total:
        raise ChecksumError(
            f"Download of {url} is truncated: received {received} of the {total} bytes the "
            "server announced"
        )
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256:
        raise ChecksumError(
            f"Download of {url} does not match: expected sha256 {sha256}, got {actual} "
            f"({received} bytes)"
        )


def download_verified(url: str, path: str, sha256: str, timeout: float | None = None) -> str:
    """The local file ``path`` holding ``url``'s content with the given sha256.

    A cached ``path`` is used when its sha256 matches (no network access); otherwise it is
    deleted and ``url`` is downloaded. Truncated or mismatching content is discarded and the
    download retried once.

    Args:
        url: where the file is.
        path: where it is cached.
        sha256: its expected hex sha256.
        timeout: seconds to wait for the connection or for more data (default
            :func:`download_timeout`).

    Returns:
        ``path``.

    Raises:
        ChecksumError: both attempts gave truncated or mismatching content; the message shows
            the expected and actual sha256 (or sizes). Nothing is left in the cache.
        DownloadError: the server cannot be reached, answers with an error, or times out.
    """
    sha256 = sha256.lower()
    if os.path.isfile(path):
        actual = file_sha256(path)
        if actual == sha256:
            return path
        logger.warning(
            "Cached %s does not match (expected sha256 %s, got %s): deleting it and "
            "downloading %s again",
            path,
            sha256,
            actual,
            url,
        )
        _discard_cached(path, url)
    return _fetch(url, path, sha256, timeout)


def download_cached(
    url: str,
    path: str,
    timeout: float | None = None,
    force: bool = False,
    check: ContentCheck | None = None,
) -> str:
    """The local file ``path`` holding ``url``'s content, downloaded once.

    A cached ``path`` is used without network access. No sha256 is known, so what can be
    checked is the announced length and, given ``check``, the kind of content: a truncated
    response or one that ``check`` refuses is discarded and the download retried once. A cached
    file that ``check`` refuses (cached by an older fima) is deleted and downloaded again. The
    caller chooses a ``path`` that only this ``url`` maps to.

    Args:
        url: where the file is.
        path: where it is cached.
        timeout: as for :func:`download_verified`.
        force: download again even if ``path`` exists (it is replaced atomically).
        check: says why a file's content is not what ``url`` should give, or None when it is.

    Returns:
        ``path``.

    Raises:
        ChecksumError: both attempts were truncated or refused by ``check``; nothing is left in
            the cache.
        DownloadError: the server cannot be reached, answers with an error, or times out.
    """
    if os.path.isfile(path) and not force:
        with open(path, "rb") as f:
            problem = check(f) if check is not None else None
        if problem is None:
            logger.info("Using %s, downloaded earlier from %s", path, url)
            return path
        logger.warning(
            "Cached %s is not usable (%s): deleting it and downloading %s again", path, problem, url
        )
        _discard_cached(path, url)
    return _fetch(url, path, None, timeout, check)


def _discard_cached(path: str, url: str) -> None:
    """Delete a cached file that is not ``url``'s content, so that it can be downloaded again.

    Raises:
        DownloadError: the cache does not let it be deleted (read-only, no permission).
    """
    try:
        os.unlink(path)
    except FileNotFoundError:  # another process replaced it meanwhile
        pass
    except OSError as err:
        raise DownloadError(
            f"Cannot replace the bad cached copy {path} of {url}: {err.strerror or err}; delete "
            "it, or point FIMA_CACHE (the folder downloads are kept in) to a writable folder"
        ) from err


def _fetch(
    url: str,
    path: str,
    sha256: str | None,
    timeout: float | None,
    check: ContentCheck | None = None,
) -> str:
    """Download ``url`` into ``path`` atomically, retrying once if it is truncated, does not
    match ``sha256`` or is refused by ``check``; return ``path``."""
    timeout = download_timeout() if timeout is None else timeout

    def write(out: BinaryIO) -> None:
        _stream(url, sha256, timeout, out)
        if check is not None:
            out.flush()
            problem = check(out)
            if problem is not None:
                raise ChecksumError(f"Download of {url} is not usable: {problem}")

    def fetch() -> None:
        logger.info("Downloading %s to %s", url, path)
        remove_stale_downloads(path, max(STALE_AFTER_S, 2 * timeout))
        try:
            # w+b: the check reads the complete temporary file before it is renamed into place.
            atomic_write(path, write, mode="w+b", tag=_writer_tag())
        except DownloadError:
            raise
        except OSError as err:  # the cache, not the server: no folder, no permission, no space
            raise DownloadError(
                f"Cannot write the download of {url} to {path}: {err.strerror or err} (FIMA_CACHE "
                "sets the folder downloads are kept in)"
            ) from err

    try:
        fetch()
    except ChecksumError as err:
        logger.warning("%s; retrying once", err)
        try:
            fetch()
        except ChecksumError as again:
            raise ChecksumError(f"{again} (after one retry; nothing was cached)") from None
    return path
