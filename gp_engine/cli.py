"""`gp-engine` console script: one sub-command per step of the data flow.

Each sub-command lives in ``gp_engine/commands/<name>.py`` with ``register(subparsers)`` and
``run(args) -> int``. Heavy imports (torch, onnxruntime) happen inside ``run`` so that
``gp-engine --help`` is instant and generation on CPU never imports torch.

Errors a user can cause (GPEngineError, an OSError on a path, MemoryError, a missing optional module)
print one line ``gp-engine CMD: error: MSG`` (:func:`gp_engine.errors.user_message`) and exit with
status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import GPEngineError, user_message

COMMANDS = ["segment", "stats", "train", "build", "plan", "generate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gp-engine",
        description="GrainPaint engine: generate 3D grain microstructures with a diffusion model.",
    )
    parser.add_argument("--version", action="version", version=f"gp-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"gp_engine.commands.{name}")
        p = module.register(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"\ngp-engine {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `gp-engine plan ... | head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (GPEngineError, OSError, MemoryError, ModuleNotFoundError) as exc:
        # errors the user can cause: one line, status 2; anything else is a bug and keeps its traceback
        message = user_message(exc)
        if message is None:
            raise
        print(f"gp-engine {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
