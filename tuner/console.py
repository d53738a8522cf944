"""Console entry points: `sfkd-search` is `python -m tuner.search`, with the same flags and --help
(pyproject.toml's [project.scripts] names one function here per command)."""
from importlib import import_module

from tuner.cli import run_cli

COMMANDS = ("search", "export", "final", "report", "teacher", "heatmaps", "sync", "checkpoint")


def _entry(command: str):
    def entry() -> int:
        return run_cli(import_module(f"tuner.{command}").main)

    entry.__name__ = entry.__qualname__ = command
    entry.__doc__ = f"sfkd-{command}: python -m tuner.{command}"
    return entry


search, export, final, report, teacher, heatmaps, sync, checkpoint = (_entry(c) for c in COMMANDS)
