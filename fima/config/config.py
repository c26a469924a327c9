"""fima's ``CfgNode``: fvcore's, loaded safely, with ``_BASE_`` inheritance and strict keys."""

from __future__ import annotations

import ast
import os
from typing import Any

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from iopath.common.file_io import g_pathmgr


def _as_float_if_int(default: Any, value: Any) -> Any:
    """``value`` as a float where ``default`` is a float and ``value`` an integer (or its text).

    yacs refuses ``SOLVER.BASE_LR 1`` or ``DENSE_WEIGHT: 0`` as a type mismatch; an integer is a
    float value written without its decimal point, so it is taken as one. Anything else is left
    for yacs's type check.
    """
    if not isinstance(default, float):
        return value
    if isinstance(value, str):
        try:
            decoded = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return repr(float(decoded)) if type(decoded) is int else value
    return float(value) if type(value) is int else value


def _ints_as_floats(defaults: _FvcoreCfgNode, loaded: dict) -> dict:
    """``loaded`` (a YAML mapping) with the integers of float keys made floats, recursively."""
    out = {}
    for key, value in loaded.items():
        default = defaults.get(key) if isinstance(defaults, _FvcoreCfgNode) else None
        if isinstance(value, dict) and isinstance(default, _FvcoreCfgNode):
            out[key] = _ints_as_floats(default, value)
        else:
            out[key] = _as_float_if_int(default, value)
    return out


class CfgNode(_FvcoreCfgNode):
    """A config tree. Unknown keys are an error and YAML is always loaded safely.

    ``merge_from_file`` follows ``_BASE_`` (relative to the including file); values given later
    (the file, then the command line) override earlier ones. An integer given for a float key
    (``SOLVER.BASE_LR 1``) is taken as that float.
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
            self.merge_from_other_cfg(type(self)(_ints_as_floats(self, loaded)))
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
        cfg_list = list(cfg_list)
        for index in range(0, len(cfg_list), 2):
            full_key, node = cfg_list[index], self
            for part in full_key.split("."):
                if not isinstance(node, _FvcoreCfgNode) or part not in node:
                    raise KeyError(f"Non-existent config key: {full_key}")
                node = node[part]
            cfg_list[index + 1] = _as_float_if_int(node, cfg_list[index + 1])
        try:
            super().merge_from_list(cfg_list)
        except AssertionError as err:  # yacs reports with asserts, which python -O strips
            raise ValueError(str(err)) from None
