"""The index of a dataset: frame count, frame rate and size of every video, from headers only.

Probing reads container headers (no decoding) in parallel threads and is cached in a JSON file
keyed by path, size and modification time, so a second start reads the cache and re-probes only
videos that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from fima.data.datasets.build import VideoDataset
from fima.data.decoder import DecodeError, VideoInfo, probe_video

logger = logging.getLogger(__name__)

_INDEX_FORMAT = 1


def _file_key(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _probe(path: str) -> dict:
    key = _file_key(path)
    if key is None:
        return {"key": None, "error": "file not found"}
    try:
        info = probe_video(path)
    except DecodeError as err:
        return {"key": key, "error": str(err)}
    return {"key": key, "info": [info.num_frames, info.fps, info.width, info.height]}


def default_index_path(dataset: VideoDataset, fallback_dir: str) -> str:
    """``<root>/.fima_index/<split>-<hash>.json`` beside the data, or ``fallback_dir`` if the
    dataset root is read-only."""
    digest = hashlib.sha256("\n".join(r.path for r in dataset.records).encode()).hexdigest()[:16]
    name = f"{dataset.name}-{dataset.split}-{digest}.json"
    beside = os.path.join(dataset.root, ".fima_index")
    if os.access(dataset.root, os.W_OK):
        return os.path.join(beside, name)
    return os.path.join(fallback_dir, "video_index", name)


def build_index(
    dataset: VideoDataset, cache_file: str | None, num_threads: int = 8
) -> tuple[list[VideoInfo | None], dict[str, str]]:
    """Probe every video of ``dataset`` (reusing ``cache_file`` where files are unchanged).

    Returns:
        ``infos[i]`` for record ``i`` (None when its header is unusable) and ``{path: reason}`` of
        the unusable ones.
    """
    cached: dict[str, dict] = {}
    if cache_file and os.path.isfile(cache_file):
        try:
            with open(cache_file) as f:
                payload = json.load(f)
            if payload.get("format") == _INDEX_FORMAT:
                cached = payload["videos"]
        except (OSError, ValueError, KeyError) as err:
            logger.warning("Ignoring unreadable index cache %s: %s", cache_file, err)
    paths = [r.path for r in dataset.records]
    entries: dict[str, dict] = {}
    stale = []
    for path in paths:
        entry = cached.get(path)
        if entry is not None and entry.get("key") == _file_key(path):
            entries[path] = entry
        else:
            stale.append(path)
    if stale:
        logger.info(
            "Indexing %d of %d videos of %r from headers ...", len(stale), len(paths), dataset
        )
        with ThreadPoolExecutor(max_workers=max(num_threads, 1)) as pool:
            entries.update(zip(stale, pool.map(_probe, stale)))
        if cache_file:
            _write_json_atomic(cache_file, {"format": _INDEX_FORMAT, "videos": entries})
    infos: list[VideoInfo | None] = []
    bad: dict[str, str] = {}
    for path in paths:
        entry = entries[path]
        if "info" in entry:
            num_frames, fps, width, height = entry["info"]
            infos.append(VideoInfo(int(num_frames), float(fps), int(width), int(height)))
        else:
            infos.append(None)
            bad[path] = entry["error"]
    return infos, bad


def _write_json_atomic(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
