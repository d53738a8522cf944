"""python -m tuner.sync --run-dir DIR: upload the MLflow writes a search kept while the server was down."""
import sys
from pathlib import Path

from tuner.cli import OneLineParser, quiet_libraries, run_cli
from tuner.errors import ServiceError, UsageError
from tuner.storage import read_run_state
from tuner.tracking import PENDING_FILE, UNREADABLE_FILE, check_tracking_store, normalise_uri, sync_pending

STATE_FILES = ("search.json", "final.json")  # where a search or a final run says which store it writes to


def main(argv=None) -> int:
    quiet_libraries()
    p = OneLineParser(prog="python -m tuner.sync", description=(
        "Send the MLflow writes that a search or a final run could not send (kept in <run-dir>/mlflow_pending.jsonl); "
        "a final run's registration among them."))
    p.add_argument("--run-dir", required=True, help="the search's (or final run's) folder, e.g. sfkd_runs/smoke-20260101-120000")
    p.add_argument("--tracking-uri", help="where to send them (default: the search's own tracking URI)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir).resolve()
    state_file = next((run_dir / f for f in STATE_FILES if (run_dir / f).is_file()), None)
    if state_file is None:
        raise UsageError(f"--run-dir {run_dir} is not a search's or final run's folder (no {' or '.join(STATE_FILES)})")
    state = read_run_state(state_file.read_text(errors="replace"), state_file, ("tracking_uri", "experiment"))
    if not (run_dir / PENDING_FILE).exists():
        print(f"nothing to send: {run_dir} has no pending MLflow writes")
        return 0
    uri = normalise_uri(a.tracking_uri or state["tracking_uri"])
    try:
        check_tracking_store(uri)
    except UsageError as e:  # the store is still away: the writes wait, nothing is lost
        raise ServiceError(f"{e}; the writes stay in {run_dir / PENDING_FILE}: run this again when it answers") from None
    left, unreadable = sync_pending(run_dir, uri, state["experiment"])
    if unreadable:
        print(f"error: line{'s' if len(unreadable) > 1 else ''} {', '.join(map(str, unreadable))} of "
              f"{run_dir / PENDING_FILE} {'are' if len(unreadable) > 1 else 'is'} not a complete write (cut off); the "
              f"other writes were {'sent' if not left else 'kept'}, the unreadable lines are kept in "
              f"{run_dir / UNREADABLE_FILE}", file=sys.stderr)
        return 1
    if left:
        print(f"error: {left} writes still cannot be sent; they stay in {run_dir / PENDING_FILE}", file=sys.stderr)
        return 1
    print(f"all pending MLflow writes of {run_dir.name} sent")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
