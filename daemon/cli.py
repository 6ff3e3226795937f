"""The `promptd` command: process, run, worker, status, check-config, doctor, export."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from daemon import __version__
from daemon.config import MODES, Config, default_config_path, load_config
from daemon.errors import ConfigError, PromptdError
from daemon.logs import configure_logging
from daemon.records import Result

if TYPE_CHECKING:
    from daemon.config.rules import RuleResolver

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
_Advance = Callable[[int], object]


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
    p.set_defaults(func=_cmd_process)

    p = command("run", "Watch the inbox folders and keep every image's sidecars current.")
    p.add_argument(
        "--worker",
        action="store_true",
        help="With distributed.broker: also run a local `promptd worker` on this machine",
    )
    p.set_defaults(func=_cmd_run)

    p = command("worker", "Process images from the broker (distributed.broker) on this machine.")
    p.add_argument(
        "--name", help="Worker name shown in `promptd status` (default: promptd-PID@HOST)"
    )
    p.set_defaults(func=_cmd_worker)

    p = command("status", "Show what the running service is doing.")
    p.set_defaults(func=_cmd_status)

    p = command("check-config", "Validate config.yaml and every .promptd.yaml under the inbox.")
    p.set_defaults(func=_cmd_check_config)

    p = command("doctor", "Check Ollama, the models, CLIP, the GPU and the inbox; say what to fix.")
    p.set_defaults(func=_cmd_doctor)

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
    p.set_defaults(func=_cmd_export)


def _load(args: argparse.Namespace) -> Config:
    path = args.config if args.config is not None else default_config_path(os.environ)
    return load_config(path, os.environ)


# --- process -------------------------------------------------------------------------------


def _cmd_process(args: argparse.Namespace) -> int:
    from daemon.pipeline import discover, process_batch
    from daemon.pipeline.backends import build_context

    config = _load(args)
    configure_logging(config.log.level, config.log.format)
    ctx = build_context(config, mode_override=args.mode)
    missing = [p for p in args.paths if not p.exists()]
    for path in missing:
        print(f"promptd: {path}: no such file or folder", file=sys.stderr)
    paths = [p.resolve() for p in discover([p for p in args.paths if p.exists()], config)]
    show_bar = not args.no_progress and sys.stderr.isatty()
    started = time.perf_counter()
    results: list[Result] = []
    batch = config.clip.batch_size
    with _progress(len(paths), show_bar) as advance:
        for i in range(0, len(paths), batch):
            chunk = process_batch(paths[i : i + batch], ctx, force=args.force)
            results.extend(chunk)
            advance(len(chunk))
    _update_manifests(config, ctx.rules, results)
    print(summarize(results, time.perf_counter() - started))
    failed = {"error", "failed", "held", "retry"}
    return EXIT_FAILED if missing or any(r.outcome in failed for r in results) else EXIT_OK


def _update_manifests(config: Config, rules: RuleResolver, results: Sequence[Result]) -> None:
    """Rewrite the manifests of the folders (rule key ``manifests``) the results fall under."""
    from daemon.dataset.keeper import ManifestKeeper

    keeper = ManifestKeeper(lambda: config, lambda: rules)
    for result in results:
        keeper.note(result.path)
    keeper.flush_all()


def summarize(results: Sequence[Result], seconds: float) -> str:
    """One line: counts per outcome and images per second (skipped images excluded)."""
    counts = Counter(r.outcome for r in results)
    worked = len(results) - counts["skipped"]
    rate = worked / seconds if seconds > 0 else 0.0
    failed = counts["error"] + counts["failed"] + counts["retry"]
    parts = [
        f"{len(results)} images: {counts['ok']} ok",
        f"{counts['degraded']} degraded",
        f"{counts['skipped']} skipped",
        f"{failed} failed",
    ]
    if counts["held"]:
        parts.append(f"{counts['held']} held by invalid rules")
    return ", ".join(parts) + f" in {seconds:.1f} s ({rate:.2f} images/s)"


class _progress:
    """A tqdm bar on a terminal that keeps log lines readable; a no-op otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled

    def __enter__(self) -> _Advance:
        if not self.enabled:
            return lambda n: None
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        self._bar = tqdm(total=self.total, unit="img", file=sys.stderr)
        bar = self._bar

        def advance(n: int) -> object:
            return bar.update(n)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.close()
            self._redirect.__exit__(None, None, None)


# --- export -----------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from daemon.dataset.export import default_output, export_bytes, write_export

    config = _load(args)
    folder: Path = args.folder
    if not folder.is_dir():
        print(f"promptd: {folder}: not a folder", file=sys.stderr)
        return EXIT_FAILED
    if args.out is not None and str(args.out) == "-":
        data, count = export_bytes(folder, args.format, config)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        print(f"{count} images", file=sys.stderr)
        return EXIT_OK
    out = args.out if args.out is not None else default_output(folder, args.format)
    try:
        count = write_export(folder, args.format, out, config)
    except PromptdError as exc:
        print(f"promptd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{out}: {count} images")
    return EXIT_OK


# --- check-config, status, run, doctor --------------------------------------------------------


def _cmd_check_config(args: argparse.Namespace) -> int:
    from daemon.config.rules import check_all
    from daemon.pipeline.analyze.vocab import check_vocabularies

    config = _load(args)
    problems, warnings = check_all(config)
    problems += check_vocabularies(config.clip)
    for warning in warnings:
        print(warning)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found.")
        return EXIT_CONFIG
    print(f"{config.source or 'built-in defaults'}: OK ({len(config.inbox)} inbox folder(s))")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from daemon.service.state import format_status, pid_alive, read_state, service_state_path

    config = _load(args)
    state = read_state(service_state_path(config))
    alive = state is not None and pid_alive(state.pid)
    text = format_status(state, now=datetime.now(timezone.utc), alive=alive)
    print(text, end="")
    if config.distributed.broker is not None:
        if not text.endswith("\n"):
            print()
        from daemon.distributed.status import format_distributed, read_status, status_path

        folder = service_state_path(config).parent
        print(format_distributed(read_status(status_path(folder))), end="")
    print()
    return EXIT_OK if alive else EXIT_FAILED


def _cmd_run(args: argparse.Namespace) -> int:
    from daemon.api.launch import api_companions
    from daemon.service.daemon import run_service

    config = _load(args)
    configure_logging(config.log.level, config.log.format)
    try:
        return run_service(
            config,
            config_path=config.source,
            companions_for=api_companions,
            local_worker=args.worker,
        )
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)


def _cmd_worker(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.distributed.broker is None:
        where = config.source or "config.yaml"
        print(
            f"promptd worker: set distributed.broker in {where} (redis://HOST:PORT/DB)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    configure_logging(config.log.level, config.log.format)
    try:
        from daemon.distributed.worker import run_worker
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)
    return run_worker(config, args.name)


def _missing_extra(exc: ModuleNotFoundError) -> int:
    """distributed.broker is set but Celery is not installed: say how to install it."""
    if (exc.name or "").split(".")[0] not in ("celery", "kombu", "redis", "billiard"):
        raise exc
    print(
        f"promptd: distributed.broker needs {exc.name}: pip install 'promptd[distributed]'",
        file=sys.stderr,
    )
    return EXIT_CONFIG


def _cmd_doctor(args: argparse.Namespace) -> int:
    from daemon.doctor import run_checks

    config = _load(args)
    configure_logging("warning", config.log.format)
    ok = True
    for check in run_checks(config):
        print(check.render())
        ok = ok and check.level != "fail"
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
