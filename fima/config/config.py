"""fima's ``CfgNode``: fvcore's, loaded safely, with ``_BASE_`` inheritance and strict keys."""

from __future__ import annotations

import ast
import contextvars
import os
import re
from typing import Any

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from iopath.common.file_io import g_pathmgr

BASE_KEY = "_BASE_"
# The files whose _BASE_ chain is being loaded, outermost first (for errors and cycles).
_LOADING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "fima_config_loading", default=()
)


def _decoded(value: Any) -> Any:
    """A command-line or YAML string as the Python literal it spells (yacs reads it so), else
    ``value`` itself."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _coerce(key: str, default: Any, value: Any) -> Any:
    """``value`` of ``key`` (whose default is ``default``) made ready for yacs's type check.

    yacs refuses ``SOLVER.BASE_LR 1`` or ``DENSE_WEIGHT: 0`` as a type mismatch; an integer is a
    float value written without its decimal point, so it is taken as one, also inside a tuple of
    floats (``INPUT.CROP_SCALE (0, 1)``). yacs checks that a tuple is a tuple but not what it
    holds: its elements must have the type of the default's elements. Text given for a text key
    is that text, also where it reads as a number (``OUTPUT_DIR 2024``). An empty or null value
    is refused (yacs would take it for any key). Anything else is left for yacs's check.

    Raises:
        ValueError: a tuple element of another type than the default's, a single value for a
            section of keys, or no value (the message names the key).
    """
    decoded = _decoded(value)
    if isinstance(default, _FvcoreCfgNode) and not isinstance(decoded, dict):
        # yacs would print the whole section's defaults as its "expected value".
        first = sorted(default)[0]
        raise ValueError(
            f"{key} is a section of keys ({', '.join(sorted(default))}), not a value; set one "
            f"of its keys, e.g. {key}.{first}"
        )
    if decoded is None and default is not None:
        # yacs lets None replace any value; validation or the run would then fail on it.
        raise ValueError(
            f"{key} has no value (empty, null or None); give a {type(default).__name__}, as its "
            f"default {default!r} is"
        )
    if isinstance(default, str) and isinstance(value, str) and not isinstance(decoded, str):
        # Text is the value of a text key (OUTPUT_DIR 2024, quoted "2024" in YAML), not the
        # number yacs would decode it to and then refuse; quoted, yacs decodes it back to text.
        return repr(value)
    if isinstance(default, float):
        return float(decoded) if type(decoded) is int else value
    if not (isinstance(default, (tuple, list)) and isinstance(decoded, (tuple, list))):
        return value
    kinds = {type(v) for v in default}
    if len(kinds) != 1:  # empty (SOLVER.STEPS) or mixed: nothing to compare with
        return value
    kind = kinds.pop()
    if kind is float:
        decoded = [float(v) if type(v) is int else v for v in decoded]
    if any(type(v) is not kind for v in decoded):
        raise ValueError(
            f"{key}: must hold {kind.__name__} values, as its default {tuple(default)} does; "
            f"got {tuple(decoded)!r}"
        )
    return type(default)(decoded)


def _coerce_mapping(defaults: _FvcoreCfgNode, loaded: dict, prefix: str = "") -> dict:
    """``loaded`` (a YAML mapping under ``prefix``) with every value :func:`_coerce` d."""
    out = {}
    for key, value in loaded.items():
        default = defaults.get(key) if isinstance(defaults, _FvcoreCfgNode) else None
        if isinstance(value, dict) and isinstance(default, _FvcoreCfgNode):
            out[key] = _coerce_mapping(default, value, f"{prefix}{key}.")
        else:
            out[key] = _coerce(f"{prefix}{key}", default, value)
    return out


def _is_option(item: object) -> bool:
    """Whether a command-line override is an option (``--resume``) rather than a config key."""
    return isinstance(item, str) and item.startswith("--")


class CfgNode(_FvcoreCfgNode):
    """A config tree. Unknown keys are an error and YAML is always loaded safely.

    ``merge_from_file`` follows ``_BASE_`` (relative to the including file); values given later
    (the file, then the command line) override earlier ones. An integer given for a float key
    (``SOLVER.BASE_LR 1``) is taken as that float, and the elements of a tuple must have the type
    of its default's (``INPUT.MEAN ('a', 'b', 'c')`` is refused).
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        """``filename``'s YAML mapping merged onto those of its ``_BASE_`` files (one path or a
        list; relative to the file that names it unless absolute or a URL), loaded safely.

        fvcore's loader, which calls this method again for each base, with errors that name the
        file at fault: a missing base names the file whose ``_BASE_`` refers to it, a base that
        includes itself (directly or through others) is refused with the cycle, and a YAML
        error gives the file, line and column.

        Raises:
            FileNotFoundError: the file or one of its bases does not exist.
            ValueError: a file that is not a readable YAML mapping, a ``_BASE_`` that is not
                a path or list of paths, a cycle of bases, or a section that a file sets to a
                value where its base has keys.
        """
        if allow_unsafe:
            raise ValueError("fima loads YAML safely only; allow_unsafe=True is not supported")
        chain = _LOADING.get()
        key = filename if "://" in filename else os.path.realpath(filename)
        if key in chain:
            cycle = " -> ".join((*chain[chain.index(key) :], key))
            raise ValueError(f"Config {filename}: its _BASE_ chain includes it again: {cycle}")
        # Read once here for errors that name the file and its referrer; fvcore reads it again
        # (configs are a few hundred bytes) and does the inheritance.
        given = cls._read_yaml(filename, chain[-1] if chain else None).get(BASE_KEY, [])
        bases = given if isinstance(given, list) else [given]
        if not all(isinstance(base, str) and base for base in bases):
            raise ValueError(
                f"Config {filename}: _BASE_ must be a config file path or a list of them, "
                f"got {given!r}"
            )
        token = _LOADING.set((*chain, key))
        try:
            return super().load_yaml_with_base(filename, allow_unsafe=False)
        except AssertionError as err:
            # fvcore's "Cannot inherit key 'X' from base!": this file sets a section of its
            # bases to a value. A base's own such error was said at its level already.
            found = re.search(r"key '(.+)'", str(err))
            problem = f"{found[1]} is a value in its _BASE_, not a section" if found else err
            raise ValueError(f"Config {filename}: {problem}") from None
        finally:
            _LOADING.reset(token)

    @classmethod
    def _read_yaml(cls, filename: str, included_by: str | None) -> dict:
        """The YAML mapping of one file; ``included_by`` names it in its ``_BASE_``."""
        where = f" (the _BASE_ of {included_by})" if included_by else ""
        if not g_pathmgr.exists(filename):
            raise FileNotFoundError(f"Config file not found: {filename}{where}")
        try:
            with cls._open_cfg(filename) as f:
                content = yaml.safe_load(f)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = " ".join(filter(None, (err.context, err.problem)))
            raise ValueError(f"Cannot read config {filename}{at}{where}: {problem}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"Cannot read config {filename}{where}: {err}") from None
        except IsADirectoryError:
            raise ValueError(f"Config {filename}{where} is a directory, not a YAML file") from None
        except OSError as err:
            raise ValueError(
                f"Cannot read config {filename}{where}: {err.strerror or err}"
            ) from None
        if not isinstance(content, dict):
            raise ValueError(f"Config {filename}{where} must be a YAML mapping of keys to values")
        return content

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file (and its ``_BASE_`` chain) into this config.

        Raises:
            FileNotFoundError: the file (or one of its bases) does not exist.
            ValueError: the file is not a YAML mapping, sets a value of the wrong type, or
                ``allow_unsafe=True`` was asked for.
            KeyError: the file sets a key that no default declares.
        """
        loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        try:
            self.merge_from_other_cfg(type(self)(_coerce_mapping(self, loaded)))
        except KeyError as err:
            raise KeyError(f"{err.args[0]} (in {os.path.abspath(cfg_filename)})") from None
        except ValueError as err:
            raise ValueError(f"{err} (in {os.path.abspath(cfg_filename)})") from None

    def _has_key(self, full_key: str) -> bool:
        """Whether ``full_key`` (``SOLVER.BASE_LR``) names a key or section of this config."""
        node: Any = self
        for part in full_key.split("."):
            if not isinstance(node, _FvcoreCfgNode) or part not in node:
                return False
            node = node[part]
        return True

    def merge_from_list(self, cfg_list: list[str]) -> None:
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` from the command line.

        Raises:
            ValueError: an option (``--resume``) where a key should be, which argparse left
                among the overrides because it came after them; ``KEY=VALUE``; an odd number of
                items; or a value of the wrong type.
            KeyError: a key that no default declares.
        """
        first = next((i for i in range(0, len(cfg_list), 2) if _is_option(cfg_list[i])), None)
        if first is not None:
            options = " ".join(item for item in cfg_list[first:] if _is_option(item))
            raise ValueError(f"options ({options}) must come before the KEY VALUE overrides")
        # Where the keys are: every other item, or any item once the pairs are off.
        keys = cfg_list[:: 1 + (len(cfg_list) % 2 == 0)]
        written_with_equals = next(
            (
                item
                for item in keys
                if isinstance(item, str) and "=" in item and self._has_key(item.split("=")[0])
            ),
            None,
        )
        if written_with_equals is not None:
            key, value = written_with_equals.split("=", 1)
            raise ValueError(
                f"{written_with_equals}: config overrides are KEY VALUE pairs separated by a "
                f"space: {key} {value}"
            )
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
            cfg_list[index + 1] = _coerce(full_key, node, cfg_list[index + 1])
        try:
            super().merge_from_list(cfg_list)
        except AssertionError as err:  # yacs reports with asserts, which python -O strips
            raise ValueError(str(err)) from None
