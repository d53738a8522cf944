"""The search's Optuna study, kept in Optuna's own RDB storage (`optuna.db` beside the run, and on the
parent run in MLflow), so importances and `optuna-dashboard` read the real study: the space's own
distributions (log scales included), and the score the search ranks by."""
from pathlib import Path

from tuner.ranking import score_key

STUDY_FILE = "optuna.db"
STUDY_ARTIFACT_DIR = "optuna"
MIN_TRIALS_FOR_IMPORTANCE = 4


def storage_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def build_optuna_searcher(space, study_path: Path | None, study_name: str):
    """Ray's OptunaSearch over a study stored at `study_path` (None: in memory, for the check that
    builds everything before a search records anything). It is told each trial's score
    (`best_<metric>`, the ranking rule's), and each Optuna trial records its Ray trial id and the
    epochs it ran, so a report can compare trials at the same budget."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class RecordedOptunaSearch(OptunaSearch):
        def suggest(self, trial_id):
            out = super().suggest(trial_id)
            if trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
            return out

        def on_trial_complete(self, trial_id, result=None, error=False):
            if result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._ot_trials[trial_id].set_user_attr("epochs", int(result.get("epoch", 0)))
            super().on_trial_complete(trial_id, result, error)

    from tuner.pareto import objectives_of, result_field

    s = space.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage() if study_path is None else optuna.storages.RDBStorage(storage_url(study_path))
    metric, mode = score_key(s["metric"]), s["mode"]
    objectives = objectives_of(s)
    if objectives:  # Optuna's TPE is multi-objective (Ozaki et al. 2020): one value per objective, in order
        metric, mode = [result_field(o) for o in objectives], [o["mode"] for o in objectives]
    return RecordedOptunaSearch(sampler=optuna.samplers.TPESampler(seed=s["seed"]), metric=metric,
                                mode=mode, storage=storage, study_name=study_name)


def load_study(path: Path):
    """The one study in an optuna.db file."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(path)
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def study_importances(study, max_t: int | None) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the study's parameters for its objective, and a sentence saying which
    trials they compare: those that ran the full budget when at least MIN_TRIALS_FOR_IMPORTANCE did,
    else every finished trial, saying that this mixes budgets."""
    import optuna
    from optuna.trial import TrialState

    # A multi-objective study: the importances are for its first objective, the accuracy.
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values
            and abs(t.values[0]) != float("inf")]
    full = [t for t in done if max_t and t.user_attrs.get("epochs") == max_t]
    if len(full) >= MIN_TRIALS_FOR_IMPORTANCE:
        trials, which = full, f"the {len(full)} trials that ran the full budget of {max_t} epochs"
    elif len(done) >= MIN_TRIALS_FOR_IMPORTANCE:
        trials = done
        which = (f"all {len(done)} finished trials, which mix budgets ({len(full)} ran the full {max_t} epochs, "
                 f"the others were stopped early and count with the best they reached)")
    else:
        return None, (f"Importances need at least {MIN_TRIALS_FOR_IMPORTANCE} finished trials "
                      f"({len(done)} finished).")
    same = optuna.create_study(directions=study.directions)
    same.add_trials(trials)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    imp = optuna.importance.get_param_importances(same, evaluator=evaluator, target=target)
    return imp, f"Importances: Optuna's fANOVA on the study's objective over {which}."
