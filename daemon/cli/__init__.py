"""The `promptd` command: process, run, worker, status, check-config, doctor, export.

The top of the house: may import anything. ``common`` holds the exit codes and config
loading, ``process`` the one-shot run, ``commands`` the rest; ``python -m daemon.cli`` works.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from daemon import __version__
from daemon.cli.commands import (
    cmd_check_config,
    cmd_doctor,
    cmd_export,
    cmd_run,
    cmd_status,
    cmd_worker,
)
from daemon.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from daemon.cli.process import cmd_process, summarize
from daemon.config import MODES
from daemon.errors import ConfigError

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "main", "summarize"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    if not hasattr(args, "func"):
        _parser().print_help()
        return EXIT_CONFIG
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"promptd: configuration problem in {exc.path or 'config'}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptd",
        description="Write Stable Diffusion prompt sidecars (.txt, .json) next to images.",
    )
    parser.add_argument("--version", action="version", version=f"promptd {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config", type=Path, help="config.yaml (default: $PROMPTD_CONFIG, ./config.yaml)"
        )
        return p

    p = command("process", "Process images or folders once and exit.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--mode", choices=MODES, help="Override every rule's mode for this run")
    p.add_argument("--force", action="store_true", help="Redo images whose sidecars are up to date")
    p.add_argument("--no-progress", action="store_true", help="No progress bar")
    p.set_defaults(func=cmd_process)

    p = command("run", "Watch the inbox folders and keep every image's sidecars current.")
    p.add_argument(
        "--worker",
        action="store_true",
        help="With distributed.broker: also run a local `promptd worker` on this machine",
    )
    p.set_defaults(func=cmd_run)

    p = command("worker", "Process images from the broker (distributed.broker) on this machine.")
    p.add_argument(
        "--name", help="Worker name shown in `promptd status` (default: promptd-PID@HOST)"
    )
    p.set_defaults(func=cmd_worker)

    p = command("status", "Show what the running service is doing.")
    p.set_defaults(func=cmd_status)

    p = command("check-config", "Validate config.yaml and every .promptd.yaml under the inbox.")
    p.set_defaults(func=cmd_check_config)

    p = command("doctor", "Check Ollama, the models, CLIP, the GPU and the inbox; say what to fix.")
    p.set_defaults(func=cmd_doctor)

    _export_parser(command)
    return parser


def _export_parser(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("export", "Write a folder's training-set manifest from its sidecar records.")
    p.add_argument("folder", type=Path, metavar="FOLDER")
    p.add_argument(
        "--format",
        choices=("hf", "kohya", "csv"),
        default="hf",
        help="hf: metadata.jsonl (default); kohya: metadata_kohya.json; csv: captions.csv",
    )
    p.add_argument("--out", type=Path, help="Output file (default: in FOLDER; - for stdout)")
    p.set_defaults(func=cmd_export)
