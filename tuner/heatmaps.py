"""python -m tuner.heatmaps --runs RUN_ID [RUN_ID ...]: attention heatmaps of several runs side by side.

Each run (a trial's child run or a final run) carries `figures/probe.pt`; the first run with a teacher
gives the dense teacher's row, then one row per run, e.g. sparse without KD, KD and SF-KD (SF-KD Fig. 3).
"""
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from tuner.cli import OneLineParser, output_path, quiet_libraries, run_cli
from tuner.errors import UsageError
from tuner.figures import FIGURE_DIR, PROBE_ARTIFACT, heatmap_figure, load_probe
from tuner.tracking import tracking_client


def run_probe(client: MlflowClient, run_id: str, tmp: Path) -> tuple[str, dict]:
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own for an unknown id
        raise UsageError(f"--runs {run_id}: no such run at this tracking URI") from None
    try:
        local = client.download_artifacts(run_id, f"{FIGURE_DIR}/{PROBE_ARTIFACT}", str(tmp / run_id))
    except Exception:  # noqa: BLE001
        raise UsageError(f"--runs {run_id}: the run has no {FIGURE_DIR}/{PROBE_ARTIFACT} (it ended before "
                         "its first checkpoint, or predates heatmaps)") from None
    probe = load_probe(Path(local))
    p = run.data.params
    label = f"{run.info.run_name}\n{p.get('method', probe['method'])}, density {p.get('density', probe['target_density'])}"
    return label, probe


def main(argv=None) -> int:
    quiet_libraries()
    p = OneLineParser(prog="python -m tuner.heatmaps", description=(
        "Draw the attention heatmaps of several MLflow runs side by side: the inputs, the dense teacher, "
        "then each run's student, with the foreground square and the foreground attention share."))
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_ID", help="MLflow run ids (trial or final runs)")
    p.add_argument("--out", default="heatmaps.png", help="output PNG (default heatmaps.png)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    a = p.parse_args(argv)
    out = output_path("--out", a.out)
    client = tracking_client(a.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        probes = [run_probe(client, r, Path(tmp)) for r in a.runs]
    sizes = {tuple(pr["images"].shape) for _, pr in probes}
    if len(sizes) > 1:
        raise UsageError("--runs: these runs probed different image sets; compare runs of the same dataset and seed")
    out = heatmap_figure(probes, out)
    shares = ", ".join(f"{label.splitlines()[0]} {pr['student_fg_share']:.2f}"
                       + (f" ({pr['student_fg_enrichment']:.2f}x area)" if "student_fg_enrichment" in pr else "")
                       for label, pr in probes)
    print(f"heatmaps of {len(probes)} runs -> {out} (student foreground share: {shares})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
