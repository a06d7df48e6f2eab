"""`trt-gemma4` command line: ModelOpt export -> inspect -> convert -> verify -> plan -> build -> package -> serve."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trt_gemma4 import __version__
from trt_gemma4.commands import COMMANDS
from trt_gemma4.errors import Gemma4Error

DESCRIPTION = """\
Turn the ModelOpt FP8 export of Gemma-4-12B (quant_algo fp8_pb_wo: 128x128 block FP8 weights, BF16
activations, FP8 KV cache) and its assistant drafter into TensorRT-LLM 1.2.1 engines and a Triton model
repository. Every command works on the embedded tiny model too: start with `trt-gemma4 make-tiny DIR`.
"""


def _load(name: str):
    return importlib.import_module(f"trt_gemma4.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trt-gemma4", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"trt-gemma4 {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _load(name)
        p = sub.add_parser(
            name,
            help=mod.HELP.splitlines()[0],
            description=mod.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except Gemma4Error as e:
        if args.debug:
            raise
        print(f"trt-gemma4 {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an output path that cannot be created, a permission, a full disk: one line too
        if args.debug:
            raise
        print(f"trt-gemma4 {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"trt-gemma4 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
