"""Model zoo: shipped configs, and checkpoints served by a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch

from fima import model_zoo
from fima.checkpoint.backbone_weights import resolve_weights, weights_problem
from fima.model_zoo import download
from fima.model_zoo import model_zoo as zoo_module
from fima.modeling import build_model

CONFIG = "Quickstart/moco_synthetic.yaml"
FILE = "Quickstart/moco_synthetic/model_final.pth"
ROOT = Path(__file__).resolve().parents[2]


class Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes); ``mode`` makes it misbehave: ``"truncate"`` announces
    more bytes than it sends, ``"hang"`` accepts the request and never answers, ``"page"`` answers
    200 with a web page, ``"reset"`` resets the connection halfway through the body, ``"cut"``
    closes it halfway through a chunked body, ``"unsized"`` sends half the body without a
    Content-Length and closes."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.requests: list[str] = []
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/release"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.server.mode == "hang":
            self.server.release.wait(30)
            return
        body = self.server.files.get(self.path.removeprefix("/release/"))
        if body is None:
            self.send_error(404)
            return
        mode = self.server.mode
        if mode == "page":
            body = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
        elif mode in ("reset", "cut", "unsized"):
            self.send_response(200)
            if mode == "reset":
                self.send_header("Content-Length", str(len(body)))
            elif mode == "cut":
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half) if mode == "cut" else half)
            self.wfile.flush()
            if mode == "reset":  # close with SO_LINGER 0: the client sees ECONNRESET
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.connection.close()
            self.close_connection = True
            return
        self.send_response(200)
        extra = 1000 if self.server.mode == "truncate" else 0
        self.send_header("Content-Length", str(len(body) + extra))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        """Keep the test output clean."""


@pytest.fixture
def server(monkeypatch, tmp_path) -> Iterator[Server]:
    """A running server as ``FIMA_MODEL_ZOO_URL``, a private ``FIMA_CACHE`` and an empty table."""
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("FIMA_MODEL_ZOO_URL", srv.url)
    monkeypatch.setenv("FIMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo_module, "_CHECKPOINTS", {})
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def stop(srv: Server) -> None:
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def checkpoint() -> tuple[dict[str, torch.Tensor], bytes]:
    """A trained-looking Tiny3D MoCo state (every tensor changed) and its serialised file."""
    model = build_model(model_zoo.get_config(CONFIG))
    gen = torch.Generator().manual_seed(0)
    state = {
        k: (v + torch.rand(v.shape, generator=gen)) if v.is_floating_point() else v + 1
        for k, v in model.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save({"model": state, "iteration": 99}, buffer)
    return state, buffer.getvalue()


def saved(value: object) -> bytes:
    """What ``torch.save(value)`` writes: a small file that a MODEL.WEIGHTS URL may serve."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def publish(srv: Server, body: bytes, served: bytes | None = None) -> str:
    """Register ``body``'s sha256 for CONFIG and serve ``served`` (default ``body``)."""
    sha = hashlib.sha256(body).hexdigest()
    model_zoo.register_checkpoint(CONFIG, FILE, sha)
    srv.files[FILE] = body if served is None else served
    return sha


def cached_files(tmp_path) -> list[str]:
    root = tmp_path / "cache" / "model_zoo"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_shipped_configs_are_found() -> None:
    for name in ("Quickstart/fima_synthetic.yaml", "FIMA/i3d_ucf101_pretrain.yaml"):
        assert os.path.isfile(model_zoo.get_config_file(name))
    assert "FIMA/i3d_ucf101_pretrain.yaml" in model_zoo.available_configs()
    with pytest.raises(FileNotFoundError, match=r"available: .*Quickstart/moco_synthetic\.yaml"):
        model_zoo.get_config_file("FIMA/i3d_ucf102_pretrain.yaml")


def test_config_inherits_its_base() -> None:
    cfg = model_zoo.get_config("FIMA/i3d_ucf101_pretrain.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "FIMA"  # from Base-FIMA.yaml, via _BASE_
    assert cfg.MODEL.BACKBONE.NAME == "I3D"
    assert cfg.MODEL.WEIGHTS == ""


def test_config_without_checkpoint_lists_those_with_one(server) -> None:
    with pytest.raises(FileNotFoundError, match="no trained checkpoint .* none yet"):
        model_zoo.get_checkpoint_url("FIMA/i3d_ucf101_pretrain.yaml")
    model_zoo.register_checkpoint(CONFIG, FILE, "ab" * 32)
    with pytest.raises(FileNotFoundError, match=f"Configs with one: {CONFIG}"):
        model_zoo.get_config("FIMA/i3d_ucf101_pretrain.yaml", trained=True)
    assert model_zoo.get_checkpoint_url(CONFIG) == f"{server.url}/{FILE}"
    weights = model_zoo.get_config(CONFIG, trained=True).MODEL.WEIGHTS
    assert weights == f"fima://{FILE}"


def test_register_rejects_bad_entries(server) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        model_zoo.register_checkpoint(CONFIG, FILE, "1234")
    with pytest.raises(ValueError, match="relative"):
        model_zoo.register_checkpoint(CONFIG, "../x.pth", "ab" * 32)
    with pytest.raises(FileNotFoundError, match="not a config"):
        model_zoo.register_checkpoint("Nope/x.yaml", FILE, "ab" * 32)
    model_zoo.register_checkpoint(CONFIG, FILE, "ab" * 32)
    with pytest.raises(ValueError, match="conflicts"):
        model_zoo.register_checkpoint(CONFIG, FILE, "cd" * 32)


def test_good_file_loads_then_comes_from_the_cache(server, checkpoint, tmp_path) -> None:
    state, body = checkpoint
    publish(server, body)
    model = model_zoo.get(CONFIG, trained=True, device="cpu")
    assert not model.training
    assert_weights(model, state)
    assert cached_files(tmp_path) == [FILE]
    assert len(server.requests) == 1
    stop(server)  # the second call must not need the network
    assert_weights(model_zoo.get(CONFIG, trained=True, device="cpu"), state)
    assert resolve_weights(f"fima://{FILE}") == resolve_weights(CONFIG)


def test_tampered_file_is_refused_and_not_cached(server, checkpoint, tmp_path) -> None:
    _, body = checkpoint
    tampered = bytearray(body)
    tampered[len(body) // 2] ^= 0xFF
    sha = publish(server, body, served=bytes(tampered))
    actual = hashlib.sha256(tampered).hexdigest()
    with pytest.raises(model_zoo.ChecksumError, match=f"expected sha256 {sha}, got {actual}"):
        model_zoo.get(CONFIG, trained=True, device="cpu")
    assert len(server.requests) == 2  # one retry
    assert cached_files(tmp_path) == []


def test_truncated_response_is_refused_and_not_cached(server, checkpoint, tmp_path) -> None:
    _, body = checkpoint
    publish(server, body)
    server.mode = "truncate"
    with pytest.raises(model_zoo.ChecksumError, match=f"received {len(body)} of the"):
        model_zoo.get(CONFIG, trained=True, device="cpu")
    assert len(server.requests) == 2
    assert cached_files(tmp_path) == []


def test_server_that_never_answers_times_out(server, checkpoint, tmp_path, monkeypatch) -> None:
    _, body = checkpoint
    publish(server, body)
    server.mode = "hang"
    monkeypatch.setenv("FIMA_DOWNLOAD_TIMEOUT", "0.5")
    # The server holds the request for 30 s, then hangs up: "timed out" (not "Remote end
    # closed") says the client gave up first, and the connection it opened waited 0.5 s.
    with (
        mock.patch.object(urllib.request, "urlopen", wraps=urllib.request.urlopen) as urlopen,
        pytest.raises(model_zoo.DownloadError, match=rf"{server.url}/{FILE} timed out.*0\.5 s"),
    ):
        resolve_weights(f"fima://{FILE}")
    assert [c.kwargs["timeout"] for c in urlopen.call_args_list] == [0.5]
    assert cached_files(tmp_path) == []


def test_bad_cached_file_is_replaced(server, checkpoint, tmp_path) -> None:
    state, body = checkpoint
    publish(server, body)
    path = resolve_weights(f"fima://{FILE}")
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 16)
    assert_weights(model_zoo.get(CONFIG, trained=True, device="cpu"), state)
    assert len(server.requests) == 2


def test_unknown_zoo_file_is_not_downloaded(server) -> None:
    with pytest.raises(FileNotFoundError, match="sha256 is unknown"):
        resolve_weights("fima://elsewhere/model.pth")
    assert server.requests == []
    # Said at start-up, naming the key, before config.yaml is written and the data generated.
    from fima.config import ConfigError, validate_cfg

    cfg = model_zoo.get_config(CONFIG)
    cfg.MODEL.WEIGHTS = "fima://elsewhere/model.pth"
    with pytest.raises(ConfigError, match=r"MODEL.WEIGHTS: fima://elsewhere/model.pth is not a"):
        validate_cfg(cfg)
    assert "sha256 is unknown" in weights_problem("fima://elsewhere/model.pth")


@pytest.fixture
def second_server() -> Iterator[Server]:
    """Another server, on another port: the same URL path names another file there."""
    srv = Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    stop(srv)


def test_urls_of_two_servers_with_the_same_path_are_cached_apart(
    server, second_server, tmp_path, monkeypatch
) -> None:
    # iopath's own handler cached both as <cache>/release/weights/model.pth, without the host,
    # and returned the first server's file for the second URL.
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "iopath"))
    path = "weights/model.pth"
    server.files[path] = saved({"server": torch.tensor(1)})
    second_server.files[path] = saved({"server": torch.tensor(2)})
    first, second = f"{server.url}/{path}", f"{second_server.url}/{path}"
    first_file, second_file = resolve_weights(first), resolve_weights(second)
    assert Path(first_file).read_bytes() == server.files[path]
    assert Path(second_file).read_bytes() == second_server.files[path]
    urls = tmp_path / "cache" / "urls"
    for url, file in ((first, first_file), (second, second_file)):
        digest = hashlib.sha256(url.encode()).hexdigest()
        assert file == str(urls / digest / "model.pth")
    assert sorted(p.name for p in urls.rglob("*")) == sorted(
        [hashlib.sha256(u.encode()).hexdigest() for u in (first, second)] + ["model.pth"] * 2
    )  # no temporary file left
    assert not (tmp_path / "iopath").exists()
    stop(server)  # a cached URL is used without the network
    assert resolve_weights(first) == first_file
    assert len(server.requests) == len(second_server.requests) == 1


def test_truncated_url_download_is_retried_once_and_not_cached(server, tmp_path) -> None:
    body = server.files["weights/model.pth"] = saved({"w": torch.zeros(3)})
    server.mode = "truncate"
    url = f"{server.url}/weights/model.pth"
    size = len(body)
    with pytest.raises(model_zoo.ChecksumError, match=f"received {size} of the {size + 1000} b"):
        resolve_weights(url)
    assert len(server.requests) == 2
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
    server.mode = "normal"
    assert Path(resolve_weights(url)).read_bytes() == body


def cached_urls(tmp_path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


@pytest.mark.parametrize("mode", ["reset", "cut"])
def test_connection_lost_midway_is_retried_and_not_cached(server, checkpoint, tmp_path, mode):
    # urllib raised ConnectionResetError / http.client.IncompleteRead unwrapped: train_net.py
    # printed a traceback and nothing was retried.
    _, body = checkpoint
    publish(server, body)
    server.files["weights/model.pth"] = body
    server.mode = mode
    for url in (f"fima://{FILE}", f"{server.url}/weights/model.pth"):
        server.requests.clear()
        with pytest.raises(model_zoo.ChecksumError, match="truncated: the connection ended"):
            resolve_weights(url)
        assert len(server.requests) == 2
        assert cached_urls(tmp_path) == []
    server.mode = "normal"
    assert Path(resolve_weights(f"{server.url}/weights/model.pth")).read_bytes() == body


@pytest.mark.parametrize(
    "mode, problem",
    [("page", "starts with b'<!DOCTYPE html>.*a web page"), ("unsized", "zip archive without")],
)
def test_url_that_is_not_a_checkpoint_is_not_cached(server, checkpoint, tmp_path, mode, problem):
    # A web page (a login or rate-limit page sent with status 200) or a body cut short without a
    # Content-Length was cached, and every later run failed on the cached file without fetching
    # it again.
    _, body = checkpoint
    server.files["weights/model.pth"] = body
    server.mode = mode
    url = f"{server.url}/weights/model.pth"
    with pytest.raises(model_zoo.ChecksumError, match=f"not usable: it .*{problem}"):
        resolve_weights(url)
    assert len(server.requests) == 2
    assert cached_urls(tmp_path) == []
    server.mode = "normal"
    assert Path(resolve_weights(url)).read_bytes() == body


def test_cached_url_that_is_not_a_checkpoint_is_fetched_again(server, checkpoint, tmp_path):
    _, body = checkpoint
    server.files["weights/model.pth"] = body
    url = f"{server.url}/weights/model.pth"
    stale = Path(zoo_module.url_cache_path(url))
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"<html>502 Bad Gateway</html>")  # what an older fima kept
    assert resolve_weights(url) == str(stale)
    assert stale.read_bytes() == body
    assert len(server.requests) == 1


def test_other_url_schemes_are_refused_with_advice(tmp_path) -> None:
    # They were taken for local paths: "Checkpoint file:///.../model.pth does not exist" of a
    # file that exists.
    path = tmp_path / "model.pth"
    path.write_bytes(saved({"w": torch.zeros(1)}))
    with pytest.raises(FileNotFoundError, match=f"file:// URLs .*given as its path: {path}\\)"):
        resolve_weights(f"file://{path}")
    assert "fima does not fetch s3:// URLs" in weights_problem("s3://bucket/model.pth")
    assert "sha256 is unknown" in weights_problem("fima://Quickstart/x.pth")  # not registered
    assert weights_problem("HTTPS://example.com/model.pth") is None


def test_url_scheme_is_case_insensitive(server, tmp_path) -> None:
    body = server.files["weights/model.pth"] = saved({"w": torch.ones(2)})
    url = f"{server.url}/weights/model.pth".replace("http://", "HTTP://")
    assert Path(resolve_weights(url)).read_bytes() == body


def test_cache_that_cannot_be_written_is_a_download_error(server, tmp_path, monkeypatch) -> None:
    # A FIMA_CACHE that is a file (or read-only, or full) ended in a NotADirectoryError /
    # PermissionError traceback from train_net.py.
    server.files["weights/model.pth"] = saved({"w": torch.ones(2)})
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("FIMA_CACHE", str(blocker))
    with pytest.raises(model_zoo.DownloadError, match="Cannot write the download of .*FIMA_CACHE"):
        resolve_weights(f"{server.url}/weights/model.pth")


def test_bad_cached_file_in_a_read_only_cache_is_a_download_error(
    server, checkpoint, tmp_path, monkeypatch
) -> None:
    # os.unlink's OSError (EROFS) ended train_net.py and model_zoo.get in a traceback.
    _, body = checkpoint
    publish(server, body)
    path = resolve_weights(f"fima://{FILE}")
    Path(path).write_bytes(b"<html>not it</html>")

    def read_only(name: str) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)

    monkeypatch.setattr(download.os, "unlink", read_only)
    with pytest.raises(
        model_zoo.DownloadError, match="Cannot replace the bad cached copy .*FIMA_CACHE"
    ):
        resolve_weights(f"fima://{FILE}")
    assert Path(path).read_bytes() == b"<html>not it</html>"
    assert len(server.requests) == 1


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_bad_download_timeout_is_a_download_error(server, monkeypatch, value) -> None:
    # It was a ValueError, which train_net.py printed as a traceback once the run had started
    # (inf: an OverflowError from the socket; nan was taken as a timeout).
    server.files["weights/model.pth"] = saved({"w": torch.ones(2)})
    monkeypatch.setenv("FIMA_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(model_zoo.DownloadError, match=f"must be a finite number .* got '{value}'"):
        resolve_weights(f"{server.url}/weights/model.pth")
    assert server.requests == []


def test_url_of_a_handler_registered_by_the_user_is_fetched(tmp_path, monkeypatch) -> None:
    """A lab's own storage: an iopath handler registered on fima's PathManager."""
    from iopath.common.file_io import PathHandler

    path = tmp_path / "model.pth"
    path.write_bytes(saved({"w": torch.zeros(1)}))

    class LabHandler(PathHandler):
        def _get_supported_prefixes(self) -> list[str]:
            return ["lab://"]

        def _get_local_path(self, name: str, **kwargs: object) -> str:
            return str(tmp_path / name[len("lab://") :])

    assert weights_problem("lab://model.pth") is not None
    monkeypatch.setitem(model_zoo.PathManager._path_handlers, "lab://", LabHandler())
    assert weights_problem("lab://model.pth") is None
    assert resolve_weights("lab://model.pth") == str(path)


@pytest.mark.parametrize(
    "name", ["runs/a://b/model.pth", "C:\\runs\\x://y.pth", "C://runs/model.pth", "/tmp/://x.pth"]
)
def test_missing_local_path_containing_scheme_separator_is_a_missing_file(name: str) -> None:
    # A path with "://" somewhere was said to be a URL of a scheme fima does not fetch
    # ("fima does not fetch runs/a:// URLs"), not a file that does not exist.
    problem = weights_problem(name)
    assert problem is not None and "neither an existing file" in problem
    assert "does not fetch" not in problem


def test_what_a_killed_download_left_is_removed_but_not_a_live_download(
    server, checkpoint, tmp_path
) -> None:
    """A download killed with SIGKILL (the OOM killer, a job's time limit) left its hidden
    temporary file in the cache for good; the next download of that file now removes those of
    processes that are gone, and leaves alone those that another process may still write."""
    _, body = checkpoint
    sha = publish(server, body)
    server.mode = "hang"
    target = tmp_path / "cache" / "model_zoo" / FILE
    fetch = f"download_verified({server.url + '/' + FILE!r}, {str(target)!r}, {sha!r})"
    killed = subprocess.Popen(
        [sys.executable, "-c", f"from fima.model_zoo.download import *; {fetch}"], cwd=ROOT
    )
    deadline = time.monotonic() + 60
    while not (target.parent.is_dir() and list(target.parent.iterdir())):
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    (left,) = target.parent.iterdir()
    assert left.name.startswith(".model_final.pth.") and left.name.endswith(".tmp")
    server.mode = "normal"
    resolve_weights(f"fima://{FILE}")
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    # What is removed and what is not: a live process's (another rank's) temporary file stays.
    host, day = download._host(), 24 * 3600
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = {
            f".model_final.pth.dl-{host}-{live.pid}.a1.tmp": 0,  # another live process's
            f".model_final.pth.dl-{host}-{os.getpid()}.a2.tmp": 0,  # this process's
            ".model_final.pth.dl-elsewhere-1.a3.tmp": 0,  # another host's, recent
            ".model_final.pth.a4.tmp": 0,  # an older fima's, recent
            f".other.pth.dl-{host}-{killed.pid}.a5.tmp": 0,  # another file's
        }
        removed = {
            f".model_final.pth.dl-{host}-{killed.pid}.b1.tmp": 0,  # a process that is gone
            ".model_final.pth.dl-elsewhere-1.b2.tmp": 2 * day,  # not written for two days
            ".model_final.pth.b3.tmp": 2 * day,
        }
        for name, age in {**kept, **removed}.items():
            (target.parent / name).write_bytes(b"partial")
            os.utime(target.parent / name, (time.time() - age, time.time() - age))
        gone = download.remove_stale_downloads(str(target))
    finally:
        live.kill()
        live.wait()
    assert sorted(gone) == sorted(str(target.parent / name) for name in removed)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([*kept, target.name])


def test_eval_only_records_the_url_its_weights_came_from(server, tmp_path) -> None:
    # results.json named the cache file alone, which says nothing of where it came from.
    from fima.engine.defaults import get_user_cfg
    from tests.evaluation.helpers import TINY_OPTS
    from tests.evaluation.test_end_to_end import config, train_net

    retrieval = config("Retrieval", "tiny3d_synthetic.yaml")
    state = build_model(get_user_cfg(retrieval, TINY_OPTS, [])).state_dict()
    server.files["weights/model.pth"] = saved({"model": state})
    url = f"{server.url}/weights/model.pth"
    out = tmp_path / "eval"
    args = ["--config-file", retrieval, "--eval-only", "OUTPUT_DIR", str(out), *TINY_OPTS]
    train_net(*args, "MODEL.WEIGHTS", url)
    record = json.loads((out / "results.json").read_text())
    assert record["checkpoint_source"] == url
    assert record["checkpoint"] == zoo_module.url_cache_path(url)
    # A local file is its own source.
    train_net(*args, "MODEL.WEIGHTS", record["checkpoint"])
    assert "checkpoint_source" not in json.loads((out / "results.json").read_text())
