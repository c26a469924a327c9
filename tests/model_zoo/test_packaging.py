"""The configs ship inside the wheel, and MODEL_ZOO.md lists every config and the table's files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from fima import model_zoo
from fima.model_zoo import model_zoo as zoo_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_model_zoo_md_lists_every_config_and_file() -> None:
    with open(os.path.join(ROOT, "MODEL_ZOO.md")) as f:
        text = f.read()
    for config in model_zoo.available_configs():
        assert f"`{config}`" in text, f"MODEL_ZOO.md does not mention {config}"
    for entry in zoo_module._CHECKPOINTS.values():
        assert entry.sha256 in text and entry.file in text
    if not zoo_module._CHECKPOINTS:
        assert "No trained file is published yet" in text


@pytest.mark.slow
def test_configs_are_found_in_an_installed_wheel(tmp_path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for name in ("fima", "configs"):
        shutil.copytree(
            os.path.join(ROOT, name),
            source / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("fima-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    assert (
        site / "fima" / "model_zoo" / "configs" / "Quickstart" / "fima_synthetic.yaml"
    ).is_file()
    script = (
        "import fima, sys\n"
        "from fima import model_zoo\n"
        "assert fima.__file__.startswith(sys.argv[1]), fima.__file__\n"
        "path = model_zoo.get_config_file('FIMA/i3d_ucf101_pretrain.yaml')\n"
        "assert path.startswith(sys.argv[1]), path\n"
        "cfg = model_zoo.get_config('FIMA/i3d_ucf101_pretrain.yaml')\n"
        "assert cfg.MODEL.META_ARCHITECTURE == 'FIMA', cfg.MODEL.META_ARCHITECTURE\n"
        # tools/benchmark.py of a checkout, run with fima installed from the wheel, looked for
        # the configs and tools/train_net.py under site-packages/ ("Config file not found").
        "import os\n"
        "from fima.benchmark import motion\n"
        "assert os.path.isfile(os.path.join(motion.BENCHMARK_CONFIGS, 'moco_motion.yaml'))\n"
        "assert motion.TRAIN_NET == os.path.join(os.path.dirname(__file__), 'train_net.py')\n"
    )
    tools = tmp_path / "checkout" / "tools"  # the script runs as a checkout's tool would
    tools.mkdir(parents=True)
    (tools / "train_net.py").write_text("")
    (tools / "check.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run(
        [sys.executable, str(tools / "check.py"), str(site)], check=True, cwd=tmp_path, env=env
    )
