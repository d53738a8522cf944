"""The report of a whole search, rebuilt from MLflow alone (`python -m tuner.report` runs it).

Learning curves with ASHA's stops, the metric against each searched hyperparameter, Optuna's
parameter importances and the top configs, as PNGs and one self-contained HTML page. The driver
builds it at the end of every search and logs it to the parent run under `report/`.
"""
import base64
import html
import math
import time
from pathlib import Path

from matplotlib.ticker import MaxNLocator
from mlflow.tracking import MlflowClient

from trainables.cost import format_macs
from tuner.errors import UsageError
from tuner.figures import plt, save_figure
from tuner.optuna_study import STUDY_ARTIFACT_DIR, STUDY_FILE, load_study, study_importances
from tuner.pareto import COST_METRICS, front, front_table, objective_values, objectives_from_params
from tuner.ranking import ranked, score_key, score_of
from tuner.search_runs import search_objective
from tuner.study import TABLE_HTML as STUDY_HTML
from tuner.study import build_study
from tuner.tracking import PARENT_TAG

REPORT_DIR = "report"
CURVES_FILE = "learning_curves.png"
PARAMS_FILE = "metric_vs_params.png"
FRONT_FILE = "front.png"
FRONT_SVG = "front.svg"  # the same figure, each point a link to its child run in the MLflow UI
FRONT_MD = "front.md"
IMPORTANCE_FILE = "param_importances.png"
HTML_FILE = "report.html"
METRIC_LABELS = {"val_acc": "validation top-1 accuracy (%)", "val_acc5": "validation top-5 accuracy (%)",
                 "val_loss": "validation cross-entropy"}
# Keys that differ between trials without being searched.
NOT_SEARCHED = {"teacher", "data_dir", "seed"}


def load_trials(client: MlflowClient, parent, metric: str = "val_acc") -> list[dict]:
    """Each child run of a search: trial id, status, params, its score under the ranking rule and the
    curve of the search's metric."""
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  max_results=5000)
    trials = []
    for run in children:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
        trials.append({"trial_id": run.data.tags.get("sfkd.trial_id", run.info.run_id[:8]),
                       "status": run.data.tags.get("sfkd.status", run.info.status.lower()),
                       "params": dict(run.data.params), "curve": history,
                       "best": score_of(run.data.metrics, metric), "run_id": run.info.run_id,
                       "metrics": dict(run.data.metrics), "pareto": run.data.tags.get("sfkd.pareto"),
                       "macs": (run.data.metrics.get("macs_effective"), run.data.metrics.get("macs_dense"))})
    return sorted(trials, key=lambda t: t["trial_id"])


def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def searched_keys(trials: list[dict]) -> list[str]:
    """Config keys whose value differs between trials."""
    keys = set().union(*(t["params"] for t in trials)) if trials else set()
    return sorted(k for k in keys - NOT_SEARCHED if len({t["params"].get(k) for t in trials}) > 1)


def finished(trials: list[dict]) -> list[dict]:
    return [t for t in trials if t["best"] is not None and t["status"] not in ("diverged", "error")]


def best_first(trials: list[dict], mode: str) -> list[dict]:
    """Finished trials, best first, under the ranking rule."""
    return [t for _, _, t in ranked(((t["best"], t["trial_id"], t) for t in finished(trials)), mode)]


def curves_figure(trials: list[dict], path: Path, max_t: int | None, metric: str = "val_acc", mode: str = "max") -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    best = next(iter(best_first(trials, mode)), None)
    styles = {"completed": ("tab:blue", "o", "ran the full budget"), "stopped_early": ("tab:gray", "x", "stopped by ASHA")}
    seen = set()
    for t in trials:
        if not t["curve"]:
            continue
        color, marker, label = styles.get(t["status"], ("tab:orange", "s", t["status"]))
        epochs, values = zip(*t["curve"])
        ax.plot(epochs, values, color=color, alpha=0.7, linewidth=1.2)
        ax.plot(epochs[-1], values[-1], marker=marker, color=color, markersize=8, linestyle="none",
                label=label if label not in seen else None)
        seen.add(label)
    if best is not None and best["curve"]:
        epochs, values = zip(*best["curve"])
        ax.plot(epochs, values, color="tab:red", linewidth=2.4, label=f"best trial {best['trial_id']}")
    if max_t:
        ax.axvline(max_t, color="black", linestyle=":", linewidth=1, label=f"max_t = {max_t}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Learning curves of {len(trials)} trials; markers show where each trial ended", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def run_link(experiment_id: str, run_id: str) -> str:
    """A child run's page in the MLflow UI, relative to the server the report is viewed from."""
    return f"/#/experiments/{experiment_id}/runs/{run_id}"


def trials_front(trials: list[dict], objectives: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(values, trial) of every finished trial with all objective values, and those on the front."""
    done = [(objective_values(t["metrics"], objectives), t["trial_id"], t) for t in finished(trials)]
    done = [e for e in done if e[0] is not None]
    return done, front(done, objectives)


def front_figure(trials: list[dict], objectives: list[dict], experiment_id: str, path: Path) -> list[Path]:
    """Accuracy against the first cost: every finished trial, the front drawn as the staircase it
    dominates, as a PNG and as an SVG whose points link to their child runs."""
    done, on_front = trials_front(trials, objectives)
    acc, cost = objectives[0]["metric"], objectives[1]["metric"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    front_ids = {t for _, t, _ in on_front}
    for label, color, rows in (("dominated", "tab:gray", [e for e in done if e[1] not in front_ids]),
                               ("on the front", "tab:red", [e for e in done if e[1] in front_ids])):
        if rows:
            points = ax.scatter([v[1] for v, _, _ in rows], [v[0] for v, _, _ in rows], c=color, s=36,
                                edgecolors="black", linewidths=0.4, label=label, zorder=3)
            points.set_urls([run_link(experiment_id, t["run_id"]) for _, _, t in rows])
    if on_front:
        steps = sorted((v[1], v[0]) for v, _, _ in on_front)
        ax.step([x for x, _ in steps], [y for _, y in steps], where="post", color="tab:red", linewidth=1.2, zorder=2)
        for v, trial_id, _ in on_front:
            ax.annotate(trial_id, (v[1], v[0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{cost} ({COST_METRICS[cost]}), lower is cheaper")
    ax.set_ylabel(f"{score_key(acc)}")
    more = f"; the front also minimises {', '.join(o['metric'] for o in objectives[2:])}" if len(objectives) > 2 else ""
    ax.set_title(f"{len(on_front)} of {len(done)} finished trials on the front (red){more}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    svg = path.with_suffix(".svg")
    fig.savefig(svg)  # before save_figure, which closes the figure
    svg.write_text(svg.read_text().replace("<a xlink:href=", '<a target="_top" xlink:href='))
    return [save_figure(fig, path), svg]


def front_rows(trials: list[dict], objectives: list[dict]) -> list[tuple[tuple, str]]:
    return [(v, t) for v, t, _ in trials_front(trials, objectives)[1]]


def params_figure(trials: list[dict], keys: list[str], path: Path, metric: str = "val_acc") -> Path | None:
    done = finished(trials)
    if not keys or not done:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        raw = [t["params"].get(key) for t in done]
        nums = [_number(v) for v in raw]
        if all(n is not None for n in nums):
            xs = nums
            if min(nums) > 0 and max(nums) / min(nums) > 20:
                ax.set_xscale("log")
        else:  # categorical: one position per value
            cats = sorted(set(map(str, raw)))
            xs = [cats.index(str(v)) for v in raw]
            ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=8)
        colors = ["tab:gray" if t["status"] == "stopped_early" else "tab:blue" for t in done]
        ax.scatter(xs, [t["best"] for t in done], c=colors, s=30, edgecolors="black", linewidths=0.4)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"Best {metric} of each trial against each searched hyperparameter "
                 "(blue: full budget, gray: stopped by ASHA)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def recorded_importances(client: MlflowClient, parent, max_t: int | None) -> tuple[dict[str, float] | None, str]:
    """Importances from the Optuna study the search recorded on its parent run (optuna/optuna.db)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(parent.info.run_id, f"{STUDY_ARTIFACT_DIR}/{STUDY_FILE}", folder)
        except Exception:  # noqa: BLE001 - MLflow raises its own for a missing artifact
            return None, "Importances need the search's Optuna study; this search recorded none."
        study = load_study(Path(path))
        try:
            return study_importances(study, max_t)
        except (RuntimeError, ValueError) as e:  # e.g. every trial tied: fANOVA has no variance to split
            return None, f"Importances skipped: Optuna could not compute them ({e})."


def importance_figure(imp: dict[str, float], objective: str, path: Path) -> Path:
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.6))
    ax.barh(names, [imp[k] for k in names], color="tab:green")
    for y, k in enumerate(names):
        ax.text(imp[k], y, f" {imp[k]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"importance for {objective} (fANOVA, sums to 1)")
    ax.set_title("Optuna parameter importances, from the search's own study", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def top_configs(trials: list[dict], keys: list[str], n: int = 5, metric: str = "val_acc", mode: str = "max") -> list[dict]:
    return [{"trial": t["trial_id"], "status": t["status"], "epochs": len(t["curve"]), f"best {metric}": f"{t['best']:.4g}",
             "M MACs (effective / dense)": format_macs(*t.get("macs", (None, None))),
             **{k: _shown(t["params"].get(k, "")) for k in keys}} for t in best_first(trials, mode)[:n]]



def _shown(text: str) -> str:
    """A param as a person reads it: 0.7000000000000001 -> 0.7, 0.18483120598659894 -> 0.1848."""
    value = _number(text)
    return text if value is None or text.lower() in ("true", "false") else f"{value:.4g}"


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def html_page(title: str, summary: dict, figures: list[tuple[Path | None, str]], table: list[dict], note: str,
              study_html: str = "", front_html: str = "") -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (table[0] if table else {}))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in table)
    facts = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in summary.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}
img{{max-width:100%}}figure{{margin:1em 0}}</style></head>
<body><h1>{html.escape(title)}</h1><ul>{facts}</ul>
{front_html}{f"<h2>Comparison</h2>{study_html}" if study_html else ""}
<h2>Top {len(table)} configs</h2><table><tr>{head}</tr>{body}</table>
{''.join(_img(p, alt) for p, alt in figures)}
<p>{html.escape(note)}</p></body></html>
"""


def build_report(client: MlflowClient, parent, out_dir: Path) -> list[Path]:
    """Every report file of one search run into out_dir. Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric, mode = search_objective(parent)
    trials = load_trials(client, parent, metric)
    if not trials:
        raise UsageError(f"search run {parent.info.run_id} has no trials to report")
    params = parent.data.params
    max_t = int(_number(params.get("scheduler.max_t")) or 0) or None
    keys = searched_keys(trials)
    files = [curves_figure(trials, out_dir / CURVES_FILE, max_t, metric, mode)]
    pfig = params_figure(trials, keys, out_dir / PARAMS_FILE, metric)
    files += [pfig] if pfig else []
    imp, note = None, "Importances need Optuna as the searcher."
    if params.get("search.searcher", "optuna") == "optuna":
        imp, note = recorded_importances(client, parent, max_t)
    ifig = importance_figure(imp, score_key(metric), out_dir / IMPORTANCE_FILE) if imp else None
    files += [ifig] if ifig else []
    counts = {s: sum(t["status"] == s for t in trials) for s in sorted({t["status"] for t in trials})}
    summary = {"search run": parent.info.run_id, "space": params.get("space", parent.data.tags.get("sfkd.space", "")),
               "trials": len(trials), "by status": ", ".join(f"{k} {v}" for k, v in counts.items()),
               "searched": ", ".join(keys) or "(none)", "searcher": params.get("search.searcher", ""),
               "scheduler": f"{params.get('scheduler.type', '')}, max_t {max_t}",
               "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    figures = [(files[0], "learning curves"), (pfig, f"{metric} against searched hyperparameters"),
               (ifig, "parameter importances")]
    study_html = front_html = ""
    objectives = objectives_from_params(params)
    if objectives:  # the front leads the page: what each accuracy costs
        png, svg = front_figure(trials, objectives, parent.info.experiment_id, out_dir / FRONT_FILE)
        table = front_table(front_rows(trials, objectives), objectives)
        (out_dir / FRONT_MD).write_text(table + "\n")
        files += [png, svg, out_dir / FRONT_MD]
        links = "".join(f'<li><a target="_top" href="{html.escape(run_link(parent.info.experiment_id, t["run_id"]))}">'
                        f'trial {html.escape(t["trial_id"])}</a></li>'
                        for _, _, t in trials_front(trials, objectives)[1])
        front_html = (f"<h2>Accuracy against cost</h2>{svg.read_text().split('?>', 1)[-1]}"
                      f"<p>The front's trials (each point above links to its run too):</p><ul>{links}</ul>")
    if "study.compare_by" in params:  # a study: its comparison table and figure lead the page
        study_files, _ = build_study(client, parent, out_dir)
        files += study_files
        study_html = (out_dir / STUDY_HTML).read_text()
        figures.insert(0, (study_files[-1], "study comparison"))
        note = "A study selects nothing; the importances and top configs below are descriptive only. " + note
    page = html_page(f"{'Study' if study_html else 'Search'} report: {parent.info.run_name}", summary, figures,
                     top_configs(trials, keys, metric=metric, mode=mode), note, study_html, front_html)
    (out_dir / HTML_FILE).write_text(page)
    return files + [out_dir / HTML_FILE]


def log_report(tracker, out_dir: Path) -> list[Path]:
    """Build the report of the tracker's search and log it to the parent run (driver side)."""
    if tracker.flush():  # the report reads MLflow back: not while the server misses writes
        raise ConnectionError(f"MLflow writes to {tracker.uri} are still pending")
    files = build_report(tracker.client, tracker.client.get_run(tracker.parent_id), out_dir)
    for f in files:
        tracker.log_artifact(tracker.parent_id, str(f), REPORT_DIR)
    return files
