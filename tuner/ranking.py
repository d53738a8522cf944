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


def dominates(a: tuple[float, ...], b: tuple[float, ...], modes: tuple[str, ...]) -> bool:
    """Whether objective values `a` are at least as good as `b` in every objective and better in one
    (`modes`: max or min per objective)."""
    signs = [1 if m == "max" else -1 for m in modes]
    at_least = all(s * x >= s * y for s, x, y in zip(signs, a, b))
    return at_least and any(s * x > s * y for s, x, y in zip(signs, a, b))


def pareto_front(entries: Iterable[tuple[tuple[float, ...] | None, str, T]], modes: tuple[str, ...]
                 ) -> list[tuple[tuple[float, ...], str, T]]:
    """The non-dominated (objective values, trial id, anything) entries, ordered by the first objective
    (best first, ties by trial id). Entries with no values or a non-finite one are left out; two trials
    with equal values are both on the front."""
    kept = [e for e in entries if e[0] is not None and all(math.isfinite(v) for v in e[0])]
    front = [e for e in kept if not any(dominates(o[0], e[0], modes) for o in kept)]
    return sorted(front, key=lambda e: (order(e[0][0], e[1], modes[0])))


def hypervolume_2d(points: Iterable[tuple[float, float]], modes: tuple[str, str], reference: tuple[float, float]) -> float:
    """The area dominated by `points` and bounded by `reference` (a point worse than all of them in both
    objectives): the usual one-number summary of a two-objective front (Zitzler and Thiele 1998). Larger is
    better. Written here because it is six lines in two dimensions; no dependency is needed for that."""
    signs = [1 if m == "max" else -1 for m in modes]
    # In "maximise both" coordinates, relative to the reference.
    pts = sorted(((signs[0] * (x - reference[0]), signs[1] * (y - reference[1])) for x, y in points), reverse=True)
    area, best_y = 0.0, 0.0
    for x, y in pts:  # sweep from the largest first objective down; each point adds its new strip
        if x > 0 and y > best_y:
            area += x * (y - best_y)
            best_y = y
    return area
