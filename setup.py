"""Packaging for fima. The configs/ folder ships inside the wheel as ``fima.model_zoo.configs``."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    for line in (HERE / "fima" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("fima/__init__.py has no __version__")


def config_packages() -> tuple[list[str], dict[str, str]]:
    """Map every folder under configs/ to a subpackage of fima.model_zoo.configs.

    This way a wheel carries the YAML files and ``importlib.resources`` finds them, while a
    checkout keeps them in the top-level configs/ folder where users look for them.
    """
    packages, package_dir = [], {}
    for folder in sorted(p for p in (HERE / "configs").rglob("*") if p.is_dir()) + [
        HERE / "configs"
    ]:
        rel = folder.relative_to(HERE / "configs")
        name = ".".join(("fima", "model_zoo", "configs", *rel.parts))
        packages.append(name)
        package_dir[name] = str(folder.relative_to(HERE))
    return packages, package_dir


cfg_packages, cfg_package_dir = config_packages()

setup(
    name="fima",
    version=read_version(),
    description="Self-supervised video representation learning: MoCo and FIMA (ACM MM 2023)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fima", "fima.*"]) + cfg_packages,
    package_dir=cfg_package_dir,
    package_data={name: ["*.yaml"] for name in cfg_packages},
    install_requires=[
        "torch>=2.1,<3",
        "fvcore>=0.1.5.post20221221",
        "iopath>=0.1.9",
        "kornia>=0.7",
        "av>=11",
        "yacs>=0.1.8",
        "tensorboard>=2.12",
        "numpy>=1.23",
        "tqdm>=4.60",
        "Pillow>=9",
    ],
    extras_require={"dev": ["pytest>=7", "ruff>=0.6"]},
)
