"""structlog, configured once: a readable console on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

from daemon.clean import visible

Format = Literal["auto", "json", "console"]


def configure_logging(
    level: str = "info", fmt: Format = "auto", stream: TextIO | None = None
) -> None:
    """Route structlog and the standard library through one renderer on ``stream`` (stderr)."""
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()  # JSON escapes every control itself
    )
    escape = [_escape_hidden] if use_console else []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *escape,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log every HTTP request or weight file would drown the one line per image.
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "watchdog", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The hub client logs each retry of each file; promptd reports the outcome once itself.
    for chatty in ("huggingface_hub", "transformers"):
        logging.getLogger(chatty).setLevel(logging.ERROR)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _escape_hidden(
    logger: object, method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """On a console, a value holding ESC or a bidi override (a hostile file name) is shown
    escaped, so it cannot move the cursor or reorder the line."""
    return {
        key: visible(value) if isinstance(value, str) and key != "exception" else value
        for key, value in event_dict.items()
    }
