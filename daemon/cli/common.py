"""What every command shares: exit codes and loading config.yaml."""

from __future__ import annotations

import argparse
import os

from daemon.config import Config, default_config_path, load_config

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def load(args: argparse.Namespace) -> Config:
    """The configuration ``--config`` names ($PROMPTD_CONFIG or ./config.yaml without it)."""
    path = args.config if args.config is not None else default_config_path(os.environ)
    return load_config(path, os.environ)
