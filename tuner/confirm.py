"""Confirmation: a search's K best configs run again with N fresh seeds, so that the exported winner is
the config with the best mean, not the luckiest single trial (the winner's curse).

The confirmation is a study (docs/studies.md) written as a space file of its own in the search's run
folder: one arm per config (`trial_<id>`, the search trial's full config), seeds the search did not use,
FIFO, validation only, every pair of configs compared by seed under Holm's correction. It is recorded
as its own MLflow parent run in the search's experiment, tagged `sfkd.confirms` with the search's run
id, and resumes like any search. docs/search-spaces.md ("Confirmation") says what it costs.
"""
import json
import statistics

import yaml

from tuner.pareto import front, objective_values, objectives_of
from tuner.tracking import PARENT_TAG

CONFIRM_SPACE_FILE = "confirm_space.yaml"
ARM_PREFIX = "trial_"
# Keys a confirmation sets itself: each arm runs every confirmation seed, and never reads the test split.
OWN_KEYS = ("seed", "arm", "test_at_end")


def chosen(space, finished: list) -> list:
    """The K configs to confirm, best first: the search's ranking, or with several objectives the front
    (most accurate first). `finished`: Ray results, best first."""
    top = space.search["confirm"]["top"]
    objectives = objectives_of(space.search)
    if objectives:
        entries = [(objective_values(r.metrics or {}, objectives), r.metrics["trial_id"], r) for r in finished]
        return [r for _, _, r in front(entries, objectives)][:top]
    return finished[:top]


def _plain(value):
    """A config value as YAML writes it (Ray's samplers can hand back numpy scalars)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def space_text(space, results: list, search_run_id: str, search_name: str) -> str:
    """The confirmation's space file: an arm per chosen config, seeds after the largest the search used."""
    confirm = space.search["confirm"]
    configs = {f"{ARM_PREFIX}{r.metrics['trial_id']}": {k: _plain(v) for k, v in r.config.items() if k not in OWN_KEYS}
               for r in results}
    # What every config shares is the study's config (its data is loaded once from it); each arm keeps
    # the values that tell it apart (none, for one config under two labels).
    first = next(iter(configs.values()))
    shared = {k: v for k, v in first.items() if all(k in c and c[k] == v for c in configs.values())}
    arms = {arm: {k: v for k, v in c.items() if k not in shared} for arm, c in configs.items()}
    first_seed = max(int(r.config.get("seed", 0) or 0) for r in results) + 1
    doc = {
        "description": (f"Confirmation of search {search_name} (MLflow run {search_run_id}): its {len(arms)} best "
                        f"configs, each run again with seeds {first_seed}..{first_seed + confirm['seeds'] - 1}, "
                        f"every pair compared by seed (the search's winner is {next(iter(arms))}), "
                        f"validation only."),
        "config": shared,
        "arms": arms,
        # Every pair, the lower-ranked config minus the higher-ranked one, under Holm's correction over all
        # of them: whether any config beats another is then one family of comparisons, not K - 1 of them
        # against a winner that was itself the luckiest draw.
        "study": {"seeds": confirm["seeds"], "by": "arm", "reference": next(iter(arms)), "first_seed": first_seed,
                  "confirms": search_run_id, "correction": "holm",
                  "contrasts": [[b, a] for i, a in enumerate(arms) for b in list(arms)[i + 1:]]},
        "search": {"searcher": "grid", "seed": space.search["seed"], "max_concurrent": space.search["max_concurrent"],
                   "max_failures": space.search["max_failures"], "keep_checkpoints": 1},
        "scheduler": {"type": "fifo"},
        "resources": dict(space.resources),
    }
    return yaml.safe_dump(doc, sort_keys=False)


def run_confirmation(space, results: list, tracker, storage, name: str, args) -> int:
    """Write the confirmation's space next to the search and run it as a study (its own parent run)."""
    import copy

    from tuner.driver import check_buildable, run_search
    from tuner.spaces import parse_space

    confirm_name = f"{name}-confirm"
    path = storage.local(name) / CONFIRM_SPACE_FILE
    path.write_text(space_text(space, results, tracker.parent_id, name))
    storage.publish(path, f"{name}/{CONFIRM_SPACE_FILE}")
    cspace = parse_space(str(path))
    check_buildable(cspace)
    storage.claim(confirm_name)
    cargs = copy.copy(args)
    cargs.space, cargs.experiment, cargs.tracking_uri = str(path), tracker.experiment, tracker.uri
    argv = ["--space", str(path), "--storage-path", storage.location, "--name", confirm_name,
            "--experiment", tracker.experiment]
    top, seeds = space.search["confirm"]["top"], space.search["confirm"]["seeds"]
    print(f"confirmation: the {len(results)} best configs x {seeds} new seeds = {len(results) * seeds} runs "
          f"(search.confirm top {top}), FIFO, validation only", flush=True)
    return run_search(cspace, storage, confirm_name, cargs, argv)


def _trial_of(arm: str) -> str:
    return arm[len(ARM_PREFIX):] if arm.startswith(ARM_PREFIX) else arm


def summarise(client, parent, table: dict) -> dict:
    """What a finished confirmation found, from MLflow: each arm's mean last-epoch val_acc and mean
    best_val_acc over its seeds, the search score of its trial, the confirmed best (the best mean
    val_acc; a tie goes to the better search rank), and whether the search's winner held."""
    search_id = parent.data.params["study.confirms"]
    search_children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{search_id}'",
                                         max_results=5000)
    search_score = {r.data.tags.get("sfkd.trial_id"): r.data.metrics.get("best_val_acc") for r in search_children}
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  max_results=5000)
    best_by_arm: dict[str, list[float]] = {}
    for r in children:
        if r.data.tags.get("sfkd.status") == "completed" and "best_val_acc" in r.data.metrics:
            best_by_arm.setdefault(r.data.params.get("arm"), []).append(r.data.metrics["best_val_acc"])
    rows = table["rows"]  # the search's rank order: its winner first
    order = [row["arm"] for row in rows]
    best = max((row for row in rows if row["n"] > 0), key=lambda row: (row["val"][0], -order.index(row["arm"])))
    winner = rows[0]
    pairs = {(c["arm"], c["against"]): c for c in table["contrasts"] or []}
    return {"search_run": search_id, "winner": _trial_of(winner["arm"]), "confirmed": _trial_of(best["arm"]),
            "rows": [{"trial": _trial_of(row["arm"]), "n": row["n"], "val_acc": row["val"],
                      "best_val_acc": statistics.mean(best_by_arm.get(row["arm"], [float("nan")])),
                      "search_score": search_score.get(_trial_of(row["arm"])),
                      "vs_winner": pairs.get((row["arm"], winner["arm"]))}
                     for row in rows]}


def verdict(summary: dict) -> str:
    """The confirmation's outcome in plain words."""
    rows = {r["trial"]: r for r in summary["rows"]}
    w, c = rows[summary["winner"]], rows[summary["confirmed"]]
    curse = (f"the search's winner, trial {w['trial']}, scored {w['search_score']:.2f} (best_val_acc, one seed) in "
             f"the search and {w['best_val_acc']:.2f} on average over {w['n']} new seeds (last-epoch val_acc "
             f"{w['val_acc'][0]:.2f})")
    if summary["winner"] == summary["confirmed"]:
        return f"confirmation: the search's winner held: {curse}; no other config had a better mean."
    mean, lo, hi = c["vs_winner"]["diff"]
    said = ("resolved after Holm's correction" if c["vs_winner"]["resolved"] else
            "not resolved after Holm's correction: the two may be equal")
    return (f"confirmation: the search's single-seed winner lost: trial {c['trial']} has the best mean "
            f"(val_acc {c['val_acc'][0]:.2f}, {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] over the winner, {said}); "
            f"{curse}. The exported best config is now trial {c['trial']}.")


def record_confirmation(tracker, storage, name: str) -> None:
    """After a confirmation's table: tag both parent runs with the confirmed best, write its
    best_config.yaml (the search trial's own config) and print the verdict."""
    from tuner.best_config import write_best_config
    from tuner.search_runs import trial_config
    from tuner.study import study_table

    client = tracker.client
    parent = client.get_run(tracker.parent_id)
    summary = summarise(client, parent, study_table(client, parent))
    search_id, confirmed = summary["search_run"], summary["confirmed"]
    tracker.set_tags(search_id, {"sfkd.confirmation_run": tracker.parent_id, "sfkd.confirmed_best_trial": confirmed})
    tracker.set_tags(tracker.parent_id, {"sfkd.confirmed_best_trial": confirmed,
                                         "sfkd.winner_held": str(confirmed == summary["winner"]).lower()})
    row = next(r for r in summary["rows"] if r["trial"] == confirmed)
    tracker.log_metrics(tracker.parent_id, {"confirmed_val_acc": row["val_acc"][0],
                                            "winner_search_score": next(r["search_score"] for r in summary["rows"]
                                                                        if r["trial"] == summary["winner"])}, step=0)
    search_child = client.search_runs([parent.info.experiment_id],
                                      f"tags.`{PARENT_TAG}` = '{search_id}' and tags.`sfkd.trial_id` = '{confirmed}'")
    if search_child:
        out = write_best_config(storage.local(name) / "best_config.yaml", trial_config(client, search_child[0]),
                                search_run_id=search_id, confirmation_run_id=tracker.parent_id,
                                experiment=tracker.experiment, trial_id=confirmed,
                                confirmed_val_acc=round(row["val_acc"][0], 4), confirmed_seeds=row["n"])
        storage.publish(out, f"{name}/best_config.yaml")
        tracker.log_artifact(tracker.parent_id, str(out))
        print(f"confirmed best config -> {out}", flush=True)
    print(verdict(summary), flush=True)


def confirmed_best_trial(parent) -> str | None:
    """The trial a finished confirmation chose for this search run, if one did."""
    return parent.data.tags.get("sfkd.confirmed_best_trial")

