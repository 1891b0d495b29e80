"""Text that observers read (MLflow params, log-line fields) turned into typed values."""

from __future__ import annotations

import re

__all__ = ["parse_scalar"]

_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?((0|[1-9][0-9]*)\.[0-9]*|\.[0-9]+|(0|[1-9][0-9]*)(?=[eE]))([eE][+-]?[0-9]+)?")


def parse_scalar(text: str) -> int | float | str:
    """Integers and decimals (``"3"``, ``"0.01"``, ``"1e-4"``) become numbers; anything
    else (``"adam"``, ``"007"``, ``"nan"``, a path) stays text."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text
