"""Benchmarks behind ``tools/benchmark.py``: each task measures one part of fima and reports
figures (medians where repeated), so that anyone can rerun them on their own machine."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured figure.

    Attributes:
        section: the group it is printed under.
        name: what was measured.
        value: the measurement.
        unit: its unit (``ms``, ``clips/s``, ``MB``, ``x`` for ratios, ...).
        target: the figure it should meet, as text (``"<= 1.2"``), or empty.
    """

    section: str
    name: str
    value: float
    unit: str
    target: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_figures(title: str, figures: list[Figure], notes: list[str] = ()) -> str:
    """A plain-text report: the figures grouped by section, then the notes."""
    lines = [title, "=" * len(title)]
    width = max((len(f.name) for f in figures), default=0)
    section = None
    for figure in figures:
        if figure.section != section:
            section = figure.section
            lines += ["", section]
        target = f"   (target {figure.target})" if figure.target else ""
        lines.append(f"  {figure.name:<{width}}  {figure.value:>10.3f} {figure.unit}{target}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
