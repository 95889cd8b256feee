"""`gp-engine build` (placeholder registration; the owning module replaces this)."""

from __future__ import annotations


def register(sub):
    return sub.add_parser("build", help="(not implemented yet)")


def run(args) -> int:
    from ..errors import GPEngineError

    raise GPEngineError("'build' is not implemented yet")
