"""The other commands: export, check-config, status, run, worker and doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, load
from daemon.errors import PromptdError
from daemon.logs import configure_logging


def cmd_export(args: argparse.Namespace) -> int:
    from daemon.dataset.export import default_output, export_bytes, write_export

    config = load(args)
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


def cmd_check_config(args: argparse.Namespace) -> int:
    from daemon.config.rules import check_all
    from daemon.pipeline.analyze.vocab import check_vocabularies

    config = load(args)
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


def cmd_status(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from daemon.service.state import format_status, pid_alive, read_state, service_state_path

    config = load(args)
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


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.api.launch import api_companions
    from daemon.service.daemon import run_service

    config = load(args)
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


def cmd_worker(args: argparse.Namespace) -> int:
    config = load(args)
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


def cmd_doctor(args: argparse.Namespace) -> int:
    from daemon.doctor import run_checks

    config = load(args)
    configure_logging("warning", config.log.format)
    ok = True
    for check in run_checks(config):
        print(check.render())
        ok = ok and check.level != "fail"
    return EXIT_OK if ok else EXIT_FAILED
