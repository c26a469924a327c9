"""The index of a dataset: frame count, frame rate and size of every video, from headers only.

Probing opens each container and reads its header; nothing is decoded. It runs in a pool of
threads: on a warm file cache a probe costs about a millisecond and threads gain nothing over one
process (measured: processes lose their start-up time), but on cold or network storage the
threads overlap the waits for I/O, during which PyAV releases the GIL.

The result is cached in a JSON file per dataset, keyed by path, size and modification time, so a
second start reads the cache and re-probes only the videos that are new or changed. Under DDP,
rank 0 decides what is stale, every rank probes its share and the shares are gathered: N
processes index N times faster instead of each indexing everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fima.data.datasets.build import VideoDataset
from fima.data.decoder import DecodeError, VideoInfo, frame_files, is_frame_folder, probe_video
from fima.utils import comm
from fima.utils.progress import progress_bar

logger = logging.getLogger(__name__)

# 3: headers without a length are demuxed for one (format 2 cached them as errors).
# 4: Matroska/WebM/FLV count the video track, not the file's duration, and MP4 does not count
#    frames its edit list hides (format 3 cached counts that included frames never shown).
# 5: animated GIFs count their images (format 4 counted them from their delays), and a folder
#    of frames is keyed by its first frame too.
_INDEX_FORMAT = 5
PROBE_THREADS = 8
T = TypeVar("T")


def _file_key(path: str) -> list[int] | None:
    """What a cached probe of ``path`` is valid for: its size and modification time; for a
    folder of frames, whose probe reads its listing and its first frame, those of the folder
    (a frame added, removed or renamed changes them) and of its first frame (replaced in
    place, it changes only its own)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = [stat.st_size, stat.st_mtime_ns]
    if not is_frame_folder(path):
        return key
    try:
        first = os.stat(frame_files(path)[0])
    except (DecodeError, OSError):  # no frame: the folder's listing is all the probe read
        return key
    return [*key, first.st_size, first.st_mtime_ns]


def _probe(path: str) -> dict[str, Any]:
    key = _file_key(path)
    if key is None:
        return {"key": None, "error": "file not found"}
    try:
        info = probe_video(path)
    except DecodeError as err:
        return {"key": key, "error": str(err)}
    return {"key": key, "info": [info.num_frames, info.fps, info.width, info.height]}


def index_cache_file(dataset: VideoDataset, fallback_dir: str) -> str:
    """``<root>/.fima_index/<name>.json`` beside the data, or ``<fallback_dir>/video_index/...``
    if the dataset root is read-only. One file serves every split and fold of a dataset."""
    if os.access(dataset.root, os.W_OK):
        return os.path.join(dataset.root, ".fima_index", f"{dataset.name}.json")
    digest = hashlib.sha256(dataset.root.encode()).hexdigest()[:12]
    return os.path.join(fallback_dir, "video_index", f"{dataset.name}-{digest}.json")


def _is_entry(entry: Any) -> bool:
    """Whether ``entry`` has the shape that :func:`_probe` gives (a file key, then the four
    numbers of a :class:`VideoInfo` or an error)."""
    if not isinstance(entry, dict):
        return False
    key, info = entry.get("key"), entry.get("info")
    if not (key is None or (isinstance(key, list) and len(key) in (2, 4))):
        return False
    if info is not None:
        return (
            isinstance(info, list)
            and len(info) == 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in info)
        )
    return isinstance(entry.get("error"), str)


def _read_cache(cache_file: str | None) -> dict[str, dict[str, Any]]:
    """The cached entries; an unreadable file, or one of another shape (valid JSON that another
    program or a hand edit left), is ignored with a warning and rebuilt."""
    if not cache_file or not os.path.isfile(cache_file):
        return {}
    try:
        with open(cache_file) as f:
            payload = json.load(f)
        if not isinstance(payload, dict):
            raise ValueError("not an index (its top level is not a JSON object)")
        if payload.get("format") == _INDEX_FORMAT:
            videos = dict(payload["videos"])
            malformed = next((p for p, entry in videos.items() if not _is_entry(entry)), None)
            if malformed is not None:
                raise ValueError(f"malformed entry for {malformed}")
            return videos
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("Ignoring unreadable index cache %s: %s", cache_file, err)
    return {}


def _parallel_map(
    function: Callable[[str], T], items: Sequence[str], num_threads: int, desc: str
) -> list[T]:
    """``[function(item) for item in items]`` in a thread pool, with a progress bar on a TTY."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(num_threads, 1)) as pool:
        results = pool.map(function, items)
        return list(progress_bar(results, desc, total=len(items)))


def build_index(
    dataset: VideoDataset, cache_file: str | None, num_threads: int = PROBE_THREADS
) -> tuple[list[VideoInfo | None], dict[str, str]]:
    """Probe every video of ``dataset``, reusing ``cache_file`` where files are unchanged.

    Call it on all ranks together (it shares the work out and gathers it).

    Returns:
        ``infos[i]`` for record ``i`` (None when its header is unusable) and ``{path: reason}`` of
        the unusable ones.
    """
    start = time.perf_counter()
    paths = list(dict.fromkeys(r.path for r in dataset.records))
    cached = _read_cache(cache_file)
    stale: list[str] | None = None
    if comm.is_main_process():
        keys = _parallel_map(_file_key, paths, num_threads, "Checking the index")
        stale = [p for p, key in zip(paths, keys) if p not in cached or cached[p].get("key") != key]
    stale = comm.broadcast_object(stale)
    assert stale is not None
    share = stale[comm.get_rank() :: comm.get_world_size()]
    probed = dict(zip(share, _parallel_map(_probe, share, num_threads, f"Indexing {dataset.name}")))
    if comm.get_world_size() > 1:
        for part in comm.all_gather_object(probed):
            probed.update(part)
    entries = {p: cached[p] for p in paths if p in cached}
    entries.update(probed)
    # Another rank may have read an older cache: what it lacks, it probes itself.
    unknown = [p for p in paths if p not in entries]
    entries.update(zip(unknown, map(_probe, unknown)))
    if stale:
        logger.info(
            "Indexed %d of %d videos of %r from their headers in %.1f s",
            len(stale),
            len(paths),
            dataset,
            time.perf_counter() - start,
        )
        if cache_file and comm.is_main_process():
            cached.update(entries)  # other splits' entries stay
            _write_json_atomic(cache_file, {"format": _INDEX_FORMAT, "videos": cached})
    infos: list[VideoInfo | None] = []
    bad: dict[str, str] = {}
    for record in dataset.records:
        entry = entries[record.path]
        if "info" in entry:
            num_frames, fps, width, height = entry["info"]
            infos.append(VideoInfo(int(num_frames), float(fps), int(width), int(height)))
        else:
            infos.append(None)
            bad[record.path] = entry["error"]
    return infos, bad


def _write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    """Write the cache, or warn: it only saves the next start some probing, so a disk that
    is full or refuses the file must not stop this one (the index is already in memory)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    except OSError as err:
        logger.warning("Cannot write the index cache %s (%s); the next start re-indexes", path, err)
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if not isinstance(err, OSError):
            raise
        logger.warning("Cannot write the index cache %s (%s); the next start re-indexes", path, err)
