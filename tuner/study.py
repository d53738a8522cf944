"""Studies: fixed arms, each run with seeds 0..N-1, compared pairwise with a reference arm.

A study's numbers come from MLflow alone (the child runs of its parent), so the table the driver prints
at the end and the one `tuner.report` rebuilds later are the same table. Per arm: n seeds, last-epoch
validation accuracy and the student's foreground attention share as mean and standard deviation; the
paired difference from the reference arm (same seed, same validation images) with a 95% t interval
over the seed pairs; and, once every run of every arm has finished, the last-epoch test accuracy.
"""
import html
import math
import statistics
from pathlib import Path

from mlflow.tracking import MlflowClient

from tuner.figures import plt, save_figure
from tuner.tracking import PARENT_TAG

TABLE_MD = "study_table.md"
TABLE_HTML = "study_table.html"
FIGURE = "study_comparison.png"


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided t interval of the mean; nan bounds when n < 2 (no spread to measure)."""
    from scipy import stats

    n, mean = len(values), statistics.mean(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def load_runs(client: MlflowClient, parent) -> list[dict]:
    """Each child run of a study: its arm (the value of the compared key), its stratum (the values of the
    study's other grid keys), seed, status and last-epoch numbers."""
    p = parent.data.params
    by, strata = p["study.compare_by"], [k for k in p.get("study.strata", "").split(",") if k]
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  max_results=5000)
    runs = []
    for r in children:
        m = r.data.metrics  # MLflow's latest value of each metric: the last epoch's
        runs.append({"arm": str(r.data.params.get(by)), "stratum": tuple((k, r.data.params.get(k)) for k in strata),
                     "seed": int(float(r.data.params.get("seed", 0))), "status": r.data.tags.get("sfkd.status", ""),
                     "val_acc": m.get("val_acc"), "fg_share": m.get("student_fg_share"),
                     "teacher_fg_share": m.get("teacher_fg_share"), "test_acc": m.get("test_acc"),
                     "precision": r.data.params.get("precision_used")})
    return runs


def comparison(runs: list[dict], reference: str, seeds: int, arm_order: list[str] | None = None) -> dict:
    """The study table as data: a row per (stratum, arm), the reference arm first in each stratum, each
    arm paired by seed with the reference of its own stratum."""
    done = [r for r in runs if r["status"] == "completed" and r["val_acc"] is not None]
    arms = list(dict.fromkeys((arm_order or []) + sorted({r["arm"] for r in runs})))
    arms = [reference] + [a for a in arms if a != reference]
    strata = list(dict.fromkeys(sorted((r.get("stratum", ()) for r in runs), key=str)))
    rows = []
    for stratum in strata:
        here = [r for r in done if r.get("stratum", ()) == stratum]
        ref = {r["seed"]: r for r in here if r["arm"] == reference}
        for arm in arms:
            mine = sorted((r for r in here if r["arm"] == arm), key=lambda r: r["seed"])
            label = arm + "".join(f", {k}={v}" for k, v in stratum)
            row = {"arm": arm, "label": label, "n": len(mine), "seeds": [r["seed"] for r in mine],
                   "val": mean_std([r["val_acc"] for r in mine]),
                   "fg": mean_std([r["fg_share"] for r in mine if r["fg_share"] is not None]),
                   "val_by_seed": [r["val_acc"] for r in mine], "test_by_seed": [r["test_acc"] for r in mine]}
            if arm != reference:
                diffs = [r["val_acc"] - ref[r["seed"]]["val_acc"] for r in mine if r["seed"] in ref]
                row["pairs"] = len(diffs)
                row["diff"] = t_interval(diffs) if diffs else (float("nan"),) * 3
            rows.append(row)
    complete = bool(rows) and all(r["n"] == seeds for r in rows) and all(
        t is not None for r in rows for t in r["test_by_seed"])
    for row in rows:
        if complete:
            row["test"] = mean_std(row["test_by_seed"])
    teacher = mean_std([r["teacher_fg_share"] for r in done if r["teacher_fg_share"] is not None])
    return {"reference": reference, "seeds": seeds, "rows": rows, "complete": complete, "teacher_fg": teacher}


def _pm(ms: tuple[float, float], digits: int = 2) -> str:
    mean, sd = ms
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def verdict(diff: tuple[float, float, float], pairs: int) -> str:
    mean, lo, hi = diff
    if pairs < 2:
        return f"{mean:+.2f} (n = {pairs}: no interval)" if pairs else "no paired seed"
    sign = "resolved, higher" if lo > 0 else "resolved, lower" if hi < 0 else "not resolved"
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] ({sign})"


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "n", "val_acc (last epoch)", "student fg share", f"val_acc - {table['reference']} (95% CI)"]
    if table["complete"]:
        head.append("test_acc (last epoch)")
    body = []
    for row in table["rows"]:
        cells = [row["label"], str(row["n"]), _pm(row["val"]), _pm(row["fg"], 3),
                 "(reference)" if row["arm"] == table["reference"] else verdict(row["diff"], row["pairs"])]
        if table["complete"]:
            cells.append(_pm(row["test"]))
        body.append(cells)
    return head, body


def notes(table: dict, precision: str | None) -> list[str]:
    out = ["Mean ± standard deviation over seeds; differences are paired by seed (same initial student, "
           "masks, training inputs and validation images) with a 95% t interval over the seed pairs. "
           "An interval that excludes 0 is resolved."]
    if not math.isnan(table["teacher_fg"][0]):
        out.append(f"The dense teacher's foreground share on the same images: {_pm(table['teacher_fg'], 3)}.")
    out.append("test_acc: the last epoch's test accuracy of each finished run, read once per run after its "
               "training ended; nothing was selected on it." if table["complete"] else
               "test_acc is shown once every run of every arm has finished.")
    if precision:
        out.append(f"All arms ran at precision {precision}.")
    return out


def markdown(table: dict, precision: str | None = None) -> str:
    head, body = table_rows(table)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines + [""] + notes(table, precision)) + "\n"


def html_table(table: dict, precision: str | None = None) -> str:
    head, body = table_rows(table)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    notes_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes(table, precision))
    return (f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{rows}</table>{notes_html}")


def comparison_figure(table: dict, path: Path, by: str) -> Path:
    """A dot per seed, the mean and its 95% t interval per arm (the reference in red)."""
    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.5), layout="constrained")
    for i, row in enumerate(rows):
        ys = row["val_by_seed"]
        if not ys:
            continue
        xs = [i - 0.15 + 0.3 * k / max(1, len(ys) - 1) - 0.15 for k in range(len(ys))]  # seeds side by side
        ax.scatter(xs, ys, color="tab:gray", alpha=0.8, s=22, zorder=2, label="one seed" if i == 0 else None)
        mean, lo, hi = t_interval(ys)
        color = "tab:red" if row["arm"] == table["reference"] else "tab:blue"
        ax.errorbar([i + 0.2], [mean], yerr=None if math.isnan(lo) else [[mean - lo], [hi - mean]], fmt="o",
                    color=color, capsize=5, zorder=3)
    ax.errorbar([], [], yerr=[], fmt="o", color="black", capsize=5, label="mean and 95% t interval")
    ax.set_xticks(range(len(rows)), [f"{r['label'].replace(', ', chr(10))}\n(n={r['n']})" for r in rows])
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(f"{by} (the reference, {table['reference']}, in red)")
    ax.set_ylabel("last-epoch val_acc (%)")
    ax.set_title(f"Study: every arm over its seeds ({table['seeds']} per arm)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def build_study(client: MlflowClient, parent, out_dir: Path) -> tuple[list[Path], str]:
    """The table (Markdown, HTML) and the figure of a study's parent run into out_dir, from MLflow alone."""
    p = parent.data.params
    by, reference, seeds = p["study.compare_by"], p["study.reference"], int(p["study.seeds"])
    order = [a for a in p.get("study.arms", "").split(",") if a]
    runs = load_runs(client, parent)
    table = comparison(runs, reference, seeds, order)
    precisions = sorted({r["precision"] for r in runs if r["precision"]})
    text = markdown(table, ", ".join(precisions) or None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TABLE_MD).write_text(text)
    (out_dir / TABLE_HTML).write_text(html_table(table, ", ".join(precisions) or None))
    return [out_dir / TABLE_MD, out_dir / TABLE_HTML, comparison_figure(table, out_dir / FIGURE, by)], text
