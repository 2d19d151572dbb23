"""CLI subcommand `check-data`."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `resnets check-data`."""
