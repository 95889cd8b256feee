"""`gp-engine segment` (placeholder registration; the owning module replaces this)."""

from __future__ import annotations


def register(sub):
    return sub.add_parser("segment", help="(not implemented yet)")


def run(args) -> int:
    from ..errors import GPEngineError

    raise GPEngineError("'segment' is not implemented yet")
