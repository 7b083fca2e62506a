"""Argument types shared by the A/B scripts (``ab_bench.py``, ``native_prelu_bench.py``, ``native_op_bench.py``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable


def figure_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse ``type`` for ``--only a,b``: the names in order, each one of ``choices``."""
    known = list(choices)

    def parse(text: str) -> list[str]:
        wanted = text.split(",")
        if unknown := set(wanted) - set(known):
            raise argparse.ArgumentTypeError(
                f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
        return wanted

    return parse


def rounds(text: str) -> int:
    """An argparse ``type`` for ``--rounds``: an integer, at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
