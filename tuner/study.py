"""Studies: fixed arms, each run with seeds 0..N-1, compared pairwise with a reference arm.

A study's numbers come from MLflow alone (the child runs of its parent), so the table the driver prints
at the end and the one `tuner.report` rebuilds later are the same table. Per arm: n seeds (and why any
are missing), last-epoch validation accuracy and the student's foreground attention share (raw, and
over the square's area) as mean and standard deviation; the paired difference from the reference arm
(same seed, same validation images) with its 95% t interval and paired t test's p-value; and whether it
is resolved after a family-wise correction over all the table's comparisons (Holm 1979 by default;
docs/studies.md). Once every run of every arm has finished, the last-epoch test accuracy.
"""
import html
import json
import math
import statistics
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from trainables.cost import format_macs
from tuner.errors import UsageError
from tuner.figures import plt, save_figure
from tuner.spaces import parse_space
from tuner.tracking import PARENT_TAG

TABLE_MD = "study_table.md"
TABLE_HTML = "study_table.html"
FIGURE = "study_comparison.png"
ALPHA = 0.05  # family-wise error rate of a table's comparisons (per comparison with correction: none)
CORRECTION_NAMES = {"holm": "Holm", "bonferroni": "Bonferroni", "none": "no correction"}


class StudyError(UsageError):
    """A study whose runs cannot be compared as recorded (a run without a seed)."""


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided t interval of the mean; nan bounds when n < 2 (no spread to measure)."""
    from scipy import stats

    n, mean = len(values), statistics.mean(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_p(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t test (a one-sample t test of the differences against 0); nan
    with fewer than 2 pairs or identical differences (no spread: the t statistic is undefined)."""
    from scipy import stats

    if len(diffs) < 2 or statistics.stdev(diffs) == 0:
        return float("nan")
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def adjust(pvalues: list[float], correction: str = "holm") -> list[float]:
    """Family-wise adjusted p-values over every p-value given: Holm's step-down (1979), Bonferroni's, or
    none. A comparison that cannot be tested (nan) stays in the family as p = 1: it is never resolved,
    and it still counts."""
    p = [1.0 if math.isnan(v) else float(v) for v in pvalues]
    m = len(p)
    if correction == "none":
        return p
    if correction == "bonferroni":
        return [min(1.0, m * v) for v in p]
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))  # adjusted p-values never fall down the order
        out[i] = running
    return out


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
        if "seed" not in r.data.params:  # read as seed 0, it would silently stand in for another run
            raise StudyError(f"run {r.info.run_id} ({r.info.run_name}) of study {parent.info.run_id} records no seed; "
                             f"a study pairs its runs by seed, so it cannot place this one")
        m = r.data.metrics  # MLflow's latest value of each metric: the last epoch's
        runs.append({"arm": str(r.data.params.get(by)), "stratum": tuple((k, r.data.params.get(k)) for k in strata),
                     "seed": int(float(r.data.params["seed"])), "status": r.data.tags.get("sfkd.status", ""),
                     "reason": r.data.tags.get("sfkd.reason", ""),
                     "val_acc": m.get("val_acc"), "fg_share": m.get("student_fg_share"),
                     "fg_enrichment": m.get("student_fg_enrichment"),
                     "teacher_fg_share": m.get("teacher_fg_share"), "test_acc": m.get("test_acc"),
                     "precision": r.data.params.get("precision_used"), "method": r.data.params.get("method"),
                     "taps": r.data.params.get("taps_student"),
                     "macs": (m.get("macs_effective"), m.get("macs_dense"))})
    return runs


def _paired(mine: list[dict], other: list[dict]) -> dict:
    """The paired difference of two arms' runs of one stratum, seed by seed: mean and t interval, p."""
    by_seed = {r["seed"]: r for r in other}
    diffs = [r["val_acc"] - by_seed[r["seed"]]["val_acc"] for r in mine if r["seed"] in by_seed]
    return {"pairs": len(diffs), "diff": t_interval(diffs) if diffs else (float("nan"),) * 3,
            "identical": len(diffs) > 1 and statistics.stdev(diffs) == 0, "p": paired_p(diffs)}


def comparison(runs: list[dict], reference: str, seeds: int, arm_order: list[str] | None = None,
               correction: str = "holm", contrasts: list[tuple[str, str]] | None = None, first_seed: int = 0,
               cells: list[list] | None = None) -> dict:
    """The study table as data: a row per (stratum, arm), the reference arm first in each stratum, each
    arm paired by seed with the reference of its own stratum; resolution corrected over every comparison
    of the table. `contrasts` [(a, b), ...]: the table's comparisons are these paired differences a - b
    within each stratum instead of every arm against the reference (docs/studies.md, "Contrasts"). The
    arms ran seeds first_seed .. first_seed + seeds - 1. `cells` [[value, [stratum values]], ...]: the
    design of a study whose arms set its strata (a stratum lists only the values its arms hold, plus any
    that ran there); None: every value in every stratum."""
    done = [r for r in runs if r["status"] == "completed" and r["val_acc"] is not None]
    arms = list(dict.fromkeys((arm_order or []) + sorted({r["arm"] for r in runs})))
    arms = [reference] + [a for a in arms if a != reference]
    strata = list(dict.fromkeys(sorted((r.get("stratum", ()) for r in runs), key=str)))
    rows, contrast_rows = [], []
    for stratum in strata:
        here = [r for r in done if r.get("stratum", ()) == stratum]
        ref = {r["seed"]: r for r in here if r["arm"] == reference}
        for arm in _arms_of(arms, stratum, runs, cells):
            mine = sorted((r for r in here if r["arm"] == arm), key=lambda r: r["seed"])
            label = arm + "".join(f", {k}={v}" for k, v in stratum)
            row = {"arm": arm, "label": label, "n": len(mine), "seeds": [r["seed"] for r in mine],
                   "val": mean_std([r["val_acc"] for r in mine]),
                   "fg": mean_std([r["fg_share"] for r in mine if r["fg_share"] is not None]),
                   "enrichment": mean_std([r["fg_enrichment"] for r in mine if r.get("fg_enrichment") is not None]),
                   "val_by_seed": [r["val_acc"] for r in mine], "test_by_seed": [r["test_acc"] for r in mine],
                   "missing": _missing(runs, arm, stratum, {r["seed"] for r in mine},
                                       range(first_seed, first_seed + seeds)),
                   "macs": _mean_macs([r.get("macs", (None, None)) for r in mine])}
            if arm != reference and contrasts is None:
                row.update(_paired(mine, list(ref.values())))
            rows.append(row)
        for a, b in contrasts or []:
            arm_runs = {arm: [r for r in here if r["arm"] == arm] for arm in (a, b)}
            label = f"{a} - {b}" + "".join(f", {k}={v}" for k, v in stratum)
            contrast_rows.append({"arm": a, "against": b, "label": label, **_paired(arm_runs[a], arm_runs[b])})
    family = contrast_rows if contrasts is not None else [r for r in rows if r["arm"] != reference]
    for row, p_adj in zip(family, adjust([r["p"] for r in family], correction)):
        row["p_adj"] = p_adj
        row["resolved"] = row["pairs"] > 1 and not row["identical"] and p_adj < ALPHA
    complete = bool(rows) and all(r["n"] == seeds for r in rows) and all(
        t is not None for r in rows for t in r["test_by_seed"])
    for row in rows:
        if complete:
            row["test"] = mean_std(row["test_by_seed"])
    teacher = mean_std([r["teacher_fg_share"] for r in done if r["teacher_fg_share"] is not None])
    return {"reference": reference, "seeds": seeds, "rows": rows, "complete": complete, "teacher_fg": teacher,
            "correction": correction, "family": len(family), "at_last_stage_only": _at_last_stage_only(done),
            "contrasts": contrast_rows if contrasts is not None else None}


def _arms_of(arms: list[str], stratum: tuple, runs: list[dict], cells: list[list] | None) -> list[str]:
    """The compared values a stratum's rows show: those its design holds and any that ran there (so a
    design that misnames a value can add a row, never hide a run)."""
    if cells is None:
        return arms
    values = [v for _, v in stratum]
    held = {value for value, prefix in cells if values[:len(prefix)] == list(prefix)}
    held |= {r["arm"] for r in runs if r.get("stratum", ()) == stratum}
    return [a for a in arms if a in held]


def _mean_macs(pairs: list[tuple]) -> tuple:
    """(effective, dense) MACs per image averaged over an arm's runs (random inits move the effective
    count a little from seed to seed); None where runs did not record them."""
    known = [p for p in pairs if p[0] is not None and p[1] is not None]
    if not known:
        return None, None
    return statistics.mean(p[0] for p in known), statistics.mean(p[1] for p in known)


def _missing(runs: list[dict], arm: str, stratum: tuple, finished: set, seeds) -> list[str]:
    """Why an arm has fewer finished runs than seeds: each missing seed with its run's status (diverged,
    failed, stopped, interrupted) or 'not run'. A run that drops out is named, never silently absent."""
    status = {r["seed"]: r for r in runs if r["arm"] == arm and r.get("stratum", ()) == stratum}
    out = []
    for seed in seeds:
        if seed in finished:
            continue
        r = status.get(seed)
        what = "not run" if r is None else (r["status"] or "unfinished")
        out.append(f"seed {seed} {what}")
    return out


def _at_last_stage_only(runs: list[dict]) -> list[str]:
    """The arms that distilled attention transfer at one tap only (the literature sums it over every stage
    group: Zagoruyko and Komodakis 2017)."""
    return sorted({r["arm"] for r in runs if r.get("method") == "at" and r.get("taps") and "," not in r["taps"]})


def _pm(ms: tuple[float, float], digits: int = 2) -> str:
    mean, sd = ms
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def difference(row: dict) -> str:
    """The paired difference and its per-comparison 95% t interval, or why there is none."""
    mean, lo, hi = row["diff"]
    pairs = row["pairs"]
    if pairs < 2:
        return f"{mean:+.2f} (n = {pairs}: no interval)" if pairs else "no paired seed"
    if row["identical"]:
        return f"{mean:+.2f} (no spread: {pairs} identical pairs)"
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def resolution(row: dict) -> str:
    if not row["resolved"]:
        return "not resolved"
    return "resolved, higher" if row["diff"][0] > 0 else "resolved, lower"


def _count(m: int) -> str:
    return f"{m} comparison{'' if m == 1 else 's'}"


def _n(row: dict) -> str:
    return str(row["n"]) + (f" ({'; '.join(row['missing'])})" if row["missing"] else "")


def _resolved_head(table: dict) -> str:
    corr = table["correction"]
    return f"resolved ({CORRECTION_NAMES[corr]}{'' if corr == 'none' else ', ' + _count(table['family'])})"


def _compared(row: dict) -> list[str]:
    p = row["p"]
    return [difference(row), "-" if math.isnan(p) else f"{p:.3f}", resolution(row)]


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    contrasts = table.get("contrasts") is not None
    head = ["arm", "n", "val_acc (last epoch)", "student fg share", "fg enrichment"]
    if not contrasts:  # every arm against the reference, in the arm's own row
        head += [f"val_acc - {table['reference']} (95% CI)", "p (paired t)", _resolved_head(table)]
    head.append("M MACs (effective / dense)")
    if table["complete"]:
        head.append("test_acc (last epoch)")
    body = []
    for row in table["rows"]:
        compared = [] if contrasts else ["(reference)", "", ""] if row["arm"] == table["reference"] else _compared(row)
        cells = [row["label"], _n(row), _pm(row["val"]), _pm(row["fg"], 3), _pm(row["enrichment"], 2), *compared,
                 format_macs(*row["macs"])]
        if table["complete"]:
            cells.append(_pm(row["test"]))
        body.append(cells)
    return head, body


def contrast_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    """The comparisons of a study with `contrasts`: one row per (contrast, stratum)."""
    head = ["comparison", "val_acc difference (95% CI)", "p (paired t)", _resolved_head(table)]
    return head, [[row["label"], *_compared(row)] for row in table["contrasts"]]


def notes(table: dict, precision: str | None) -> list[str]:
    corr, m = table["correction"], table["family"]
    out = ["Mean ± standard deviation over seeds; differences are paired by seed (same initial student, "
           "masks, training inputs and validation images), with a 95% t interval over the seed pairs and the "
           "paired t test's two-sided p-value."]
    if corr == "none":
        out.append(f"Resolved: p < 0.05 for that comparison alone (no correction for the table's {m} "
                   f"comparison{'' if m == 1 else 's'}).")
    else:
        out.append(f"Resolved: significant at 5% after {CORRECTION_NAMES[corr]}'s correction over the {m} "
                   f"comparison{'' if m == 1 else 's'} of this table (family-wise error 5%). The intervals are per "
                   f"comparison: one that excludes 0 is not resolved by itself.")
    out.append("fg enrichment: the foreground share over the square's share of the map's area (1.00: no "
               "preference), which compares squares of different sizes; the raw share does not.")
    if not math.isnan(table["teacher_fg"][0]):
        out.append(f"The dense teacher's foreground share on the same images: {_pm(table['teacher_fg'], 3)}.")
    if table.get("at_last_stage_only"):
        out.append(f"Arm {', '.join(table['at_last_stage_only'])} distilled attention transfer at one tap only; "
                   f"the literature sums it over every stage group (Zagoruyko and Komodakis 2017).")
    if table.get("confirms"):
        out.append("A confirmation chooses among a search's configs, so it reads the validation split only, never "
                   "the test split.")
    else:
        out.append("test_acc: the last epoch's test accuracy of each finished run, read once per run after its "
                   "training ended; nothing was selected on it." if table["complete"] else
                   "test_acc is shown once every run of every arm has finished.")
    if precision:
        out.append(f"All arms ran at precision {precision}.")
    return out


def _tables(table: dict) -> list[tuple[list[str], list[list[str]]]]:
    return [table_rows(table)] + ([contrast_rows(table)] if table.get("contrasts") is not None else [])


def markdown(table: dict, precision: str | None = None) -> str:
    lines = []
    for head, body in _tables(table):
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body] + [""]
    return "\n".join(lines + notes(table, precision)) + "\n"


def html_table(table: dict, precision: str | None = None) -> str:
    out = ""
    for head, body in _tables(table):
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
        out += f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{rows}</table>"
    return out + "".join(f"<p>{html.escape(n)}</p>" for n in notes(table, precision))


def comparison_figure(table: dict, path: Path, by: str) -> Path:
    """A dot per seed, the mean and its 95% t interval per arm (the reference in red); each compared arm's
    label says whether its paired difference is resolved after the table's correction."""
    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.8), layout="constrained")
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
    labels = []
    for r in rows:
        verdict = ("" if table.get("contrasts") is not None else "reference" if r["arm"] == table["reference"]
                   else resolution(r))
        labels.append(f"{r['label'].replace(', ', chr(10))}\n(n={r['n']})\n{verdict}")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    corr = CORRECTION_NAMES[table["correction"]]
    if table.get("contrasts") is not None:
        ax.set_xlabel(f"{by} (the table's {_count(table['family'])} and their resolution, {corr}, are in its "
                      f"comparisons table)")
    else:
        ax.set_xlabel(f"{by} (the reference, {table['reference']}, in red; resolved: paired, {corr}"
                      f"{'' if table['correction'] == 'none' else ' over ' + _count(table['family'])})")
    ax.set_ylabel("last-epoch val_acc (%)")
    ax.set_title(f"Study: every arm over its seeds ({table['seeds']} per arm)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def study_table(client: MlflowClient, parent, runs: list[dict] | None = None) -> dict:
    """The comparison of a study's parent run, from MLflow alone (`runs`: its load_runs, if read already)."""
    p = parent.data.params
    reference, seeds = p["study.reference"], int(p["study.seeds"])
    order = [a for a in p.get("study.arms", "").split(",") if a]
    runs = load_runs(client, parent) if runs is None else runs
    contrasts = study_param(client, parent, "contrasts", absent="")
    contrasts = [tuple(c) for c in contrasts] if contrasts is not None else None
    cells = study_param(client, parent, "cells")
    table = comparison(runs, reference, seeds, order, p.get("study.correction", "holm"), contrasts,
                       int(p.get("study.first_seed", 0)), cells)
    table["confirms"] = p.get("study.confirms")
    return table


IN_SPACE_FILE = "space"  # a study param too long for MLflow: read it from the space file logged with the parent


def study_param(client: MlflowClient, parent, key: str, absent=IN_SPACE_FILE):
    """A study's design param (`cells`, `contrasts`) as JSON from its parent run. Where it did not fit a
    param (IN_SPACE_FILE), or for `cells` a study recorded before it existed, it comes from the space file
    logged with the parent (`space/`), read with the arms the study ran (`study.only`, --arms)."""
    value = parent.data.params.get(f"study.{key}", absent)
    if value != IN_SPACE_FILE:
        return json.loads(value) if value else None
    try:
        logged = [a.path for a in client.list_artifacts(parent.info.run_id, "space") if a.path.endswith(".yaml")]
        if len(logged) != 1:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            only = parent.data.params.get("study.only")
            return parse_space(client.download_artifacts(parent.info.run_id, logged[0], tmp),
                               {"study.only": only.split(",")} if only else None).study[key]
    except (ValueError, OSError, MlflowException):  # unreadable: every value in every stratum, as before
        return None


def build_study(client: MlflowClient, parent, out_dir: Path) -> tuple[list[Path], str]:
    """The table (Markdown, HTML) and the figure of a study's parent run into out_dir, from MLflow alone."""
    by = parent.data.params["study.compare_by"]
    runs = load_runs(client, parent)
    table = study_table(client, parent, runs)
    precisions = sorted({r["precision"] for r in runs if r["precision"]})
    text = markdown(table, ", ".join(precisions) or None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TABLE_MD).write_text(text)
    (out_dir / TABLE_HTML).write_text(html_table(table, ", ".join(precisions) or None))
    return [out_dir / TABLE_MD, out_dir / TABLE_HTML, comparison_figure(table, out_dir / FIGURE, by)], text
