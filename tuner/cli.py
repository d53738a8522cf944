"""What every `python -m tuner.*` command shares: one-line errors with exit status 2."""
import argparse
import logging
import os
import sys

from tuner.errors import USER_ERRORS, ServiceError, UsageError


def quiet_libraries() -> None:
    """Keep Ray's tables, TensorBoard hints and snapshot warnings, MLflow's INFO chatter (its table
    creation) and its download bars out of the user's terminal. Each command's main calls it; nothing
    sets it at import."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit status 2. Started as a
    console script (sfkd-search), --help and errors name that script instead of `python -m tuner.X`."""

    def __init__(self, *args, prog=None, **kw):
        script = os.path.basename(sys.argv[0] or "")
        if script.startswith("sfkd-"):
            prog = script
        super().__init__(*args, prog=prog, **kw)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def output_path(flag: str, value, folder: bool = False):
    """An output path a command will write (a file, or with `folder` a folder), checked before any work
    is done: a teacher trained for an hour is never lost to an --out it cannot write. Returns it
    absolute."""
    from pathlib import Path

    path = Path(value).expanduser().resolve()
    if path.exists() and path.is_dir() != folder:
        raise UsageError(f"{flag} {path} is {'a file' if folder else 'a folder'}; expected {'a folder' if folder else 'a file'} "
                         f"to write")
    parent = next(p for p in [path if folder else path.parent, *path.parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {parent} is not a writable folder")
    if path.exists() and not folder and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path} is not writable")
    return path


def parse_sets(pairs: list[str] | None) -> dict:
    """--set key=value pairs, values parsed as YAML scalars (so 0.5 is a float and true a bool)."""
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise UsageError(f"--set {pair!r}: the value is not valid YAML") from None
    return out


def run_cli(main, argv=None) -> int:
    """Run main(argv); a user error becomes one line on stderr and exit status 2."""
    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
