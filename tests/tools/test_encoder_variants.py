"""tools/encoder_variants.py on the CPU: its stem variants compute the plain model's features, and
a variant's row is timed."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "encoder_variants", os.path.join(ROOT, "tools", "encoder_variants.py")
)
encoder_variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(encoder_variants)


def test_stem_variants_compute_the_plain_features() -> None:
    errors = encoder_variants.check_same_maths(argparse.Namespace(device="cpu"))
    assert set(errors) == {"pad4", "ncdhw"}
    assert all(error < 1e-5 for error in errors.values()), errors


def test_a_variant_is_timed() -> None:
    args = argparse.Namespace(device="cpu", crop=32, q=1, k=2, iters=2, warmup=1)
    row = encoder_variants.run_variant(args, "ncdhw", "fp32", "none", "")
    assert (row["layout"], row["dtype"], row["stem"], row["compile"]) == (
        "ncdhw",
        "fp32",
        "none",
        "eager",
    )
    assert math.isfinite(row["ms"]) and 0 < row["best_ms"] <= row["ms"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--one", "cl,bf16"], "expected layout,dtype,stem,compile"),
        (["--iters", "0"], "argument --iters: must be >= 1, got 0"),
    ],
)
def test_a_malformed_option_is_a_usage_error(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "encoder_variants.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
