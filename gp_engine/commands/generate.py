"""`gp-engine generate` (placeholder registration; the owning module replaces this)."""

from __future__ import annotations


def register(sub):
    return sub.add_parser("generate", help="(not implemented yet)")


def run(args) -> int:
    from ..errors import GPEngineError

    raise GPEngineError("'generate' is not implemented yet")
