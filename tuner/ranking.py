"""The one rule for which trial is best, used by the search's pick, the printed progress, the export
and the report: a trial scores the best value of the space's metric it reached at any epoch
(`best_<metric>`, which every result carries), the space's mode says whether larger or smaller wins,
and ties go to the smaller trial id. Optuna is told the same score."""
import math
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def score_key(metric: str) -> str:
    """The result field a trial is ranked (and Optuna is told) by: `val_loss` -> `best_val_loss`."""
    return f"best_{metric}"


def score_of(values: dict, metric: str) -> float | None:
    """A trial's score from its result or MLflow metrics; None when it has none worth ranking."""
    value = values.get(score_key(metric))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def order(value: float, trial_id: str, mode: str) -> tuple:
    """Sort key: the best trial sorts first."""
    return (-value if mode == "max" else value, trial_id)


def ranked(entries: Iterable[tuple[float | None, str, T]], mode: str) -> list[tuple[float, str, T]]:
    """(score, trial id, anything) entries, best first; entries with no score are left out."""
    kept = [e for e in entries if e[0] is not None]
    return sorted(kept, key=lambda e: order(e[0], e[1], mode))


def better(a: tuple[float, str], b: tuple[float, str] | None, mode: str) -> bool:
    """Whether (score, trial id) `a` ranks above `b` (None: nothing yet)."""
    return b is None or order(*a, mode) < order(*b, mode)
