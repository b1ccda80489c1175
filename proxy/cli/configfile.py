"""The `--config` flag of the commands that read the config file, and where it is looked for."""

from __future__ import annotations

import argparse
import os

from proxy.config import Config, load

DEFAULT_CONFIG = "/etc/pullgate/config.yaml"


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get("PULLGATE_CONFIG"),
        help=f"YAML config file (default: $PULLGATE_CONFIG, else {DEFAULT_CONFIG} if present)",
    )


def load_config(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return load(path)
