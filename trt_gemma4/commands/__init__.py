"""CLI subcommands. Each module defines HELP, add_arguments(parser) and run(args) -> int.

Heavy imports (torch, transformers) happen inside run(), so `trt-gemma4 --help` stays fast.
"""

# name -> module (under trt_gemma4.commands). Order is the order shown in --help: the data flow.
COMMANDS: dict[str, str] = {
    "make-tiny": "make_tiny",
    "inspect": "inspect_cmd",
    "convert": "convert",
    "verify": "verify",
    "calibrate-kv": "calibrate_kv",
    "plan": "plan",
    "build": "build",
    "package": "package",
    "client": "client",
    "bench-serve": "bench_serve",
}
