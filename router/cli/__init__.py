"""The `dicom-router` command and its subcommands (router/cli/main.py wires them)."""

from router.cli.main import main

__all__ = ["main"]
