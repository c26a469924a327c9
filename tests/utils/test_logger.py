"""Only rank 0 writes log.txt; other ranks print warnings and errors with their rank."""

from __future__ import annotations

import logging

from fima.utils.logger import setup_logger


def test_rank_zero_writes_the_file_other_ranks_only_warn_on_the_console(tmp_path, capsys) -> None:
    other = setup_logger(str(tmp_path), distributed_rank=1, name="fima_test_rank1")
    other.info("hidden")
    other.warning("skipped a video")
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert "hidden" not in out
    assert "WARNING [" in out and "fima_test_rank1 rank1]: skipped a video" in out

    main = setup_logger(str(tmp_path), distributed_rank=0, name="fima_test_rank0")
    main.info("visible")
    for handler in main.handlers:
        handler.flush()
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]
    assert "visible" in (tmp_path / "log.txt").read_text()
    assert "visible" in capsys.readouterr().out
    for logger in (other, main):
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
    logging.getLogger("fima_test_rank0").handlers.clear()
