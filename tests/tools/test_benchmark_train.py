"""tools/benchmark.py --task train: every figure is measured and reported, ratios per round."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from fima.benchmark import train as train_benchmark
from fima.benchmark.train import (
    float32_peak_name,
    main,
    matmul_as_convolution,
    onednn_primitive_times,
    onednn_verbose_lines,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "MODEL.TINY3D.WIDTHS", "(8, 16, 16, 32)", "MODEL.PROJECTOR.HIDDEN_DIM", "32",
    "MODEL.PROJECTOR.OUT_DIM", "16", "MODEL.MOTION_DECODER.DIM", "16",
    "MODEL.MOTION_DECODER.FFN_DIM", "16", "INPUT.NUM_FRAMES", "8", "INPUT.CROP_SIZE", "32",
    "SOLVER.IMS_PER_BATCH", "2", "DATA.NUM_WORKERS", "0",
    "DATA.SYNTHETIC.CLASSES", "('SlideHorizontal','SlideUp','SlideDown','Circle')",
    "DATA.SYNTHETIC.VIDEOS_PER_CLASS", "6", "DATA.SYNTHETIC.TEST_GROUPS", "2",
    "DATA.SYNTHETIC.NUM_FRAMES", "40", "DATA.SYNTHETIC.HEIGHT", "48",
    "DATA.SYNTHETIC.WIDTH", "64",
]  # fmt: skip


def _config(name: str) -> str:
    return os.path.join(ROOT, "configs", "Quickstart", name)


def test_compare_and_reference_report_every_figure(tmp_path, capsys) -> None:
    results = main(
        [
            "--config-file", _config("fima_synthetic.yaml"), "--reference", "--iters", "2",
            "--warmup", "0", "--data-iters", "2", "--matmul-size", "256",
            "--output-json", str(tmp_path / "r.json"), *TINY,
            "--compare", _config("moco_synthetic.yaml"), *TINY,
        ]
    )  # fmt: skip
    names = {"A/fp32", "A/bfloat16", "B/fp32", "B/bfloat16", "A/reference"}
    assert set(results["variants"]) == names
    for v in results["variants"].values():
        assert len(v["step_times"]) == 2
        for key in ("seconds_per_step", "videos_per_second", "encoder_seconds", "mfu_step",
                    "flops_per_step", "peak_memory_bytes"):  # fmt: skip
            assert math.isfinite(v[key]) and v[key] > 0, key
        # The step's own memory shows although the process keeps what it frees (the memory
        # round returns it to the system first): activations of a few MB at the least.
        assert v["step_memory_bytes"] > 2**20, v["step_memory_bytes"]
    fima, reference = results["variants"]["A/fp32"], results["variants"]["A/reference"]
    assert fima["encoder_calls"] == "q: 1 x [4]; k: 2 x [4, 12]"
    assert reference["encoder_calls"] == "q: 2 x [2, 2]; k: 8 x [2, 2, 2, 2, 2, 2, 2, 2]"
    assert results["variants"]["B/fp32"]["encoder_calls"] == "q: 1 x [4]; k: 1 x [4]"
    # The same encoder work, however it is grouped into calls.
    assert math.isclose(fima["flops_per_step"], reference["flops_per_step"], rel_tol=1e-6)
    assert results["variants"]["B/fp32"]["flops_per_step"] < fima["flops_per_step"]
    assert set(results["ratios"]) == {
        "A/bfloat16 vs A/fp32", "A/fp32 vs A/reference", "A/bfloat16 vs A/reference",
        "A/fp32 vs B/fp32", "A/bfloat16 vs B/bfloat16",
    }  # fmt: skip
    ratio = results["ratios"]["A/fp32 vs B/fp32"]
    expected = [
        b / a for a, b in zip(fima["step_times"], results["variants"]["B/fp32"]["step_times"])
    ]
    assert ratio["per_round"] == expected
    assert set(results["cpu_time_ratios"]) == set(results["ratios"])
    assert results["loader"]["seconds_per_batch"] > 0
    assert set(results["matmul_peak_flops"]) == {"float32", "bfloat16"}
    assert all(p > 0 for p in results["matmul_peak_flops"].values())
    report = capsys.readouterr().out
    assert "A/reference" in report and "median" in report and "Loader alone" in report
    assert (tmp_path / "r.json").is_file()


def test_fp32_run_measures_only_the_fp32_peak() -> None:
    # No variant is read against a bf16 peak, which a CPU without AMX would take minutes to find.
    results = main(
        [
            "--config-file", _config("moco_synthetic.yaml"), "--dtype", "fp32", "--iters", "1",
            "--warmup", "0", "--matmul-size", "256", *TINY,
        ]
    )  # fmt: skip
    assert set(results["variants"]) == {"A/fp32"}
    assert set(results["matmul_peak_flops"]) == {"float32"}
    assert results["variants"]["A/fp32"]["mfu_peak"] == "float32"


def test_float32_work_on_a_gpu_is_read_against_the_tf32_peak_where_its_convolutions_use_it(
    monkeypatch,
) -> None:
    # cuDNN runs float32 convolutions on TF32 tensor cores by default: against the plain
    # float32 matmul peak their MFU would pass 100%.
    assert float32_peak_name(torch.device("cpu")) == "float32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert float32_peak_name(torch.device("cuda", 0)) == "tfloat32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert float32_peak_name(torch.device("cuda", 0)) == "float32"


def test_the_tf32_peak_leaves_the_matmul_precision_as_it_found_it() -> None:
    from fima.benchmark.train import peak_matmul_flops

    before = torch.backends.cuda.matmul.allow_tf32
    assert peak_matmul_flops("tfloat32", torch.device("cpu"), 64) > 0
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_each_variant_steps_with_its_own_cudnn_autotuning(monkeypatch) -> None:
    # --compare A CUDNN_BENCHMARK True B CUDNN_BENCHMARK False weighs the autotuning: the global
    # flag must follow the variant that is stepping.
    seen: list[tuple[str, bool]] = []
    run_step = train_benchmark.run_step

    def recorded_step(variant, storage):
        elapsed = run_step(variant, storage)
        seen.append((variant.name, torch.backends.cudnn.benchmark))
        return elapsed

    monkeypatch.setattr(train_benchmark, "run_step", recorded_step)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    main(
        [
            "--config-file", _config("moco_synthetic.yaml"), "--dtype", "fp32", "--iters", "1",
            "--warmup", "0", "--matmul-size", "256", "--data-iters", "0", *TINY,
            "CUDNN_BENCHMARK", "True",
            "--compare", _config("moco_synthetic.yaml"), *TINY, "CUDNN_BENCHMARK", "False",
        ]
    )  # fmt: skip
    assert ("A/fp32", True) in seen and ("B/fp32", False) in seen
    assert all(flag == (name == "A/fp32") for name, flag in seen)


def test_the_profiled_step_runs_with_the_memory_a_training_process_keeps(
    monkeypatch, capsys
) -> None:
    # The memory step hands the kept memory back to the system; a step profiled after it would
    # time page faults (on the motion benchmark's FIMA arm one 50 MB add took 107 ms; warm, all
    # 91 adds of the step took 7 ms).
    import fima.benchmark.train as train_benchmark

    events: list[str] = []
    profile_step, give_back = train_benchmark.profile_step, train_benchmark.return_freed_memory

    def recorded_profile(*args, **kwargs):
        events.append("profile")
        return profile_step(*args, **kwargs)

    def recorded_give_back() -> None:
        events.append("return freed memory")
        give_back()

    monkeypatch.setattr(train_benchmark, "profile_step", recorded_profile)
    monkeypatch.setattr(train_benchmark, "return_freed_memory", recorded_give_back)
    main(
        [
            "--config-file", _config("moco_synthetic.yaml"), "--dtype", "fp32", "--iters", "1",
            "--warmup", "0", "--matmul-size", "256", "--profile", *TINY,
        ]
    )  # fmt: skip
    assert events == ["profile", "return freed memory"]
    # The profiled step's time beside the next, plain step's: a slowed-down profile shows.
    assert re.search(
        r"top operators of one profiled step \(\d+\.\d{3} s; the next step, unprofiled, "
        r"\d+\.\d{3} s",
        capsys.readouterr().out,
    )


def test_the_peak_convolution_computes_the_same_product() -> None:
    # On a CPU the peak is also timed as this convolution (oneDNN; MKL's float32 GEMM is slow on
    # AMD CPUs), so it must be the same M x K x N product.
    a, b = torch.randn(48, 32), torch.randn(32, 40)
    image, kernel = matmul_as_convolution(a, b)
    out = torch.nn.functional.conv2d(image, kernel)
    assert out.shape == (1, 40, 48, 1)
    torch.testing.assert_close(out[0, :, :, 0].t(), a @ b)


def test_dispatcher_lists_tasks_and_forwards_arguments() -> None:
    script = os.path.join(ROOT, "tools", "benchmark.py")
    result = subprocess.run(
        [sys.executable, script, "--task", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--compare" in result.stdout
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert all(f"\n  {task} " in result.stdout for task in ("data", "motion", "train"))
    result = subprocess.run(
        [sys.executable, script, "--iters", "3"], capture_output=True, text=True
    )
    assert result.returncode == 2 and not result.stdout
    assert "--task is required: one of data, motion, train" in result.stderr


def test_usage_line_and_options_name_compare_after_the_overrides_of_a() -> None:
    parser = train_benchmark.build_parser()
    usage = parser.format_usage()
    assert usage.rstrip().endswith(
        "...\n" + " " * (len(train_benchmark.PROG) + 8) + "[--compare B.yaml [KEY VALUE ...]]"
    )
    assert "B.yaml [KEY VALUE ...]: config B" in parser.format_help()
    argv_a, argv_b = train_benchmark.split_compare(
        ["--config-file", "a.yaml", "X 1", "--compare", "b.yaml", "Y", "2"]
    )
    assert parser.parse_args(argv_a).opts == ["X 1"] and argv_b == ["b.yaml", "Y", "2"]


def test_onednn_primitives_are_summed_by_implementation_and_layout() -> None:
    lines = [
        "onednn_verbose,v1,info,oneDNN v3.12.0",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,"
        "forward_training,src:bf16::blocked:acdeb::f0 wei:bf16:a:blocked:Acdeb32a::f0,"
        "attr-scratchpad:user,alg:convolution_direct,mb8_ic64oc64,2.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,"
        "forward_training,src:bf16::blocked:acdeb::f0 wei:bf16:a:blocked:Acdeb32a::f0,"
        "attr-scratchpad:user,alg:convolution_direct,mb8_ic64oc32,1.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,"
        "src:f32::blocked:abcde::f0 dst:f32::blocked:acdeb::f0,attr-scratchpad:user,,8x3x16,0.25",
        "onednn_verbose,v1,primitive,create:cache_hit,cpu,convolution,brg,forward,src,,,,0.01",
    ]
    rows = onednn_primitive_times(lines)
    assert [(r["kind"], r["calls"], r["ms"], r["dtype"]) for r in rows] == [
        ("convolution", 2, 4.0, "bf16"),
        ("reorder", 1, 0.25, "f32"),
    ]
    assert rows[0]["layout"] == "NDHWC (channels_last_3d)"
    assert rows[1]["layout"] == "NCDHW (contiguous)"


def test_onednn_verbose_output_is_captured_and_stdout_restored(capfd) -> None:
    if not torch.backends.mkldnn.is_available():
        return
    x = torch.randn(2, 8, 4, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(8, 8, 3, 3, 3)
    lines = onednn_verbose_lines(lambda: torch.nn.functional.conv3d(x, weight, padding=1))
    rows = onednn_primitive_times(lines)
    assert any(r["kind"] == "convolution" and r["layout"].startswith("NDHWC") for r in rows)
    print("after")
    assert "after" in capfd.readouterr().out


def test_dtype_choices_name_the_dtype_autocast_computes_in(monkeypatch) -> None:
    """``bf16`` pins the default "auto" to bfloat16, ``amp`` keeps it: float16 on a GPU."""
    from fima.benchmark import train as benchmark_train

    config = _config("moco_synthetic.yaml")

    def names(dtype: str, opts: list[str] | None = None) -> list[str]:
        variants = benchmark_train.variant_configs("A", config, opts or [], dtype)
        return [name for name, _ in variants]

    assert names("both") == ["A/fp32", "A/bfloat16"]
    assert names("fp32") == ["A/fp32"]
    assert names("amp") == ["A/bfloat16"]
    ((_, pinned),) = benchmark_train.variant_configs("A", config, [], "bf16")
    assert pinned.SOLVER.AMP.DTYPE == "bfloat16" and pinned.SOLVER.AMP.ENABLED
    # On a GPU (its name faked: the configs are only built, not run).
    monkeypatch.setattr(benchmark_train, "resolve_device", lambda cfg: torch.device("cuda"))
    assert names("both") == ["A/fp32", "A/float16"]
    assert names("bf16") == ["A/bfloat16"]
    assert names("amp", ["SOLVER.AMP.DTYPE", "bfloat16"]) == ["A/bfloat16"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iters", "0"], "argument --iters: must be >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
        (["--data-iters", "-1"], "argument --data-iters: must be >= 0, got -1"),
        (["--matmul-size", "-8"], "argument --matmul-size: must be >= 0, got -8"),
        (["--matmul-size", "32"], "argument --matmul-size: must be 0 (the device's default) or"),
        (["SOLVER.BASE_LR", "0.1", "--output-json", "r.json"],
         "options (--output-json) must come before the KEY VALUE overrides"),
        (["LOG_PERIOD", "0"], "benchmark.py --task train: error: LOG_PERIOD: must be positive"),
        (["--output-json", "/nowhere/r.json"], "--output-json: folder /nowhere does not exist"),
        (["--output-json", _config("fima_synthetic.yaml")],
         "fima_synthetic.yaml exists; pass --overwrite to replace it"),
        (["--compare"], "error: --compare needs a config file, then optional KEY VALUE"),
        (["MODEL.META_ARCHITECTURE", "VideoClassifier", "MODEL.CLASSIFIER.NUM_CLASSES", "4"],
         "MODEL.META_ARCHITECTURE: the train benchmark times the encoder passes of MoCo-style"),
    ],
)  # fmt: skip
def test_bad_arguments_are_usage_errors(capsys, args: list[str], message: str) -> None:
    """Before anything is built or timed: one line on stderr, exit status 2."""
    with pytest.raises(SystemExit) as stop:
        main(["--config-file", _config("moco_synthetic.yaml"), *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_config_file_after_the_overrides_is_said_to_be_misplaced(capsys) -> None:
    """Not 'the following arguments are required: --config-file', as train_net.py says."""
    with pytest.raises(SystemExit) as stop:
        main(["SOLVER.BASE_LR", "0.1", "--config-file", _config("moco_synthetic.yaml")])
    assert stop.value.code == 2
    assert "options (--config-file) must come before the KEY VALUE overrides" in (
        capsys.readouterr().err
    )
