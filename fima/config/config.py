"""fima's ``CfgNode``: fvcore's, loaded safely, with ``_BASE_`` inheritance and strict keys."""

from __future__ import annotations

import os

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from iopath.common.file_io import g_pathmgr


class CfgNode(_FvcoreCfgNode):
    """A config tree. Unknown keys are an error and YAML is always loaded safely.

    ``merge_from_file`` follows ``_BASE_`` (relative to the including file); values given later
    (the file, then the command line) override earlier ones.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        """fvcore's loader, refusing a file (or base) that is not a YAML mapping."""
        with cls._open_cfg(filename) as f:
            content = yaml.safe_load(f)
        if not isinstance(content, dict):
            raise ValueError(f"Config {filename} must be a YAML mapping of keys to values")
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file (and its ``_BASE_`` chain) into this config.

        Raises:
            FileNotFoundError: the file (or one of its bases) does not exist.
            ValueError: the file is not a YAML mapping, or ``allow_unsafe=True`` was asked for.
            KeyError: the file sets a key that no default declares.
        """
        if allow_unsafe:
            raise ValueError("fima loads YAML safely only; allow_unsafe=True is not supported")
        if not g_pathmgr.exists(cfg_filename):
            raise FileNotFoundError(f"Config file not found: {cfg_filename}")
        try:
            loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=False)
        except (yaml.YAMLError, AssertionError) as err:
            raise ValueError(f"Cannot read config {cfg_filename}: {err}") from None
        try:
            self.merge_from_other_cfg(type(self)(loaded))
        except KeyError as err:
            raise KeyError(f"{err.args[0]} (in {os.path.abspath(cfg_filename)})") from None

    def merge_from_list(self, cfg_list: list[str]) -> None:
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` from the command line.

        Raises:
            ValueError: an odd number of items, or a value of the wrong type.
            KeyError: a key that no default declares.
        """
        if len(cfg_list) % 2:
            raise ValueError(
                f"Config overrides must be KEY VALUE pairs, got an odd number: {cfg_list}"
            )
        for full_key in cfg_list[0::2]:
            node = self
            for part in full_key.split("."):
                if not isinstance(node, _FvcoreCfgNode) or part not in node:
                    raise KeyError(f"Non-existent config key: {full_key}")
                node = node[part]
        try:
            super().merge_from_list(cfg_list)
        except AssertionError as err:  # yacs reports with asserts, which python -O strips
            raise ValueError(str(err)) from None
