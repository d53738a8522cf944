"""python -m tuner.sync --run-dir DIR: upload the MLflow writes a search kept while the server was down."""
import json
import sys
from pathlib import Path

from tuner.cli import OneLineParser, quiet_libraries, run_cli
from tuner.errors import UsageError
from tuner.tracking import PENDING_FILE, sync_pending

STATE_FILES = ("search.json", "final.json")  # where a search or a final run says which store it writes to


def main(argv=None) -> int:
    quiet_libraries()
    p = OneLineParser(prog="python -m tuner.sync", description=(
        "Send the MLflow writes that a search or a final run could not send (kept in <run-dir>/mlflow_pending.jsonl)."))
    p.add_argument("--run-dir", required=True, help="the search's (or final run's) folder, e.g. sfkd_runs/smoke-20260101-120000")
    p.add_argument("--tracking-uri", help="where to send them (default: the search's own tracking URI)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir).resolve()
    state_file = next((run_dir / f for f in STATE_FILES if (run_dir / f).is_file()), None)
    if state_file is None:
        raise UsageError(f"--run-dir {run_dir} is not a search's or final run's folder (no {' or '.join(STATE_FILES)})")
    state = json.loads(state_file.read_text())
    if not (run_dir / PENDING_FILE).exists():
        print(f"nothing to send: {run_dir} has no pending MLflow writes")
        return 0
    left = sync_pending(run_dir, a.tracking_uri or state["tracking_uri"], state["experiment"])
    if left:
        print(f"error: {left} writes still cannot be sent; they stay in {run_dir / PENDING_FILE}", file=sys.stderr)
        return 1
    print(f"all pending MLflow writes of {run_dir.name} sent")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
