"""Search-space YAML -> validated fixed config, Ray Tune distributions and search settings."""
import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from trainables.config import ConfigError, DistillConfig, did_you_mean
from trainables.data.splits import NUM_CLASSES
from trainables.stages import check_feature_config
from tuner.errors import UsageError

# The spaces are package data of `search_spaces`; installed from a wheel they sit in site-packages.
SPACES_DIR = Path(str(resources.files("search_spaces")))
DISTRIBUTIONS = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2, "choice": None, "grid": None}
SECTIONS = ("description", "config", "arms", "study", "search", "scheduler", "resources")
SEARCH_DEFAULTS = {"num_samples": 8, "metric": "val_acc", "mode": "max", "searcher": "optuna", "seed": 0,
                   "max_concurrent": 2, "max_failures": 1, "keep_checkpoints": 2, "objectives": None,
                   "confirm": None}
SCHEDULER_DEFAULTS = {"type": "asha", "max_t": None, "grace_period": 1, "reduction_factor": 3}
RESOURCE_DEFAULTS = {"cpu": 1, "gpu": 0}
# A study: every arm with seeds 0..seeds-1, compared by `by` (`arm`, a grid key, or a key the arms set)
# against `reference`, separately within each stratum (the values of the `strata` keys and other grid keys).
STUDY_DEFAULTS = {"seeds": 1, "by": None, "reference": None, "strata": None, "correction": "holm", "contrasts": None,
                  "first_seed": 0, "confirms": None, "only": None}
STUDY_CORRECTIONS = ("holm", "bonferroni", "none")  # over all the comparisons of a study's table


class SpaceError(UsageError):
    """A search space that cannot be run; the message names the file and the key."""


@dataclass
class Space:
    name: str
    path: Path
    text: str
    config: dict  # fixed values
    params: dict  # key -> {dist: args}
    search: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    arms: dict = field(default_factory=dict)  # arm name -> its own recipe (config values over `config`)
    warnings: list = field(default_factory=list)  # printed before the search starts
    study: dict | None = None  # seeds, by, reference, arms (the compared values in order); None for a search
    # (grid keys, {json of their values: teacher file}) when each grid value of a data key has its own teacher
    teacher_for: tuple | None = None
    given: set = field(default_factory=set)  # the keys --set gave on the command line
    description: str = ""  # the space's own words: the parent run's description in MLflow

    def arm_configs(self) -> dict:
        """The fixed config of every arm (one unnamed arm when the space has none)."""
        if not self.arms:
            return {None: dict(self.config)}
        return {name: {**self.config, **recipe, "arm": name} for name, recipe in self.arms.items()}


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_space(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SpaceError(f"space file {p} {'is a folder' if p.is_dir() else 'does not exist'}")
        return p.resolve()
    p = SPACES_DIR / f"{name}.yaml"
    if not p.is_file():
        raise SpaceError(f"unknown space {name!r}{did_you_mean(name, available_spaces())} "
                         f"(expected one of {', '.join(available_spaces())} or a .yaml path)")
    return p


def _check_distribution(where: str, key: str, spec) -> None:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(f"{where}: {key}: expected a fixed value or one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: {key}: unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    n = DISTRIBUTIONS[kind]
    if not isinstance(args, list) or not args or (n is not None and len(args) != n):
        shape = {2: "[low, high]", 3: "[low, high, q]"}.get(n, "a non-empty list of values")
        raise SpaceError(f"{where}: {key}: {kind} expects {shape}, got {args!r}")
    if n is not None:
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise SpaceError(f"{where}: {key}: {kind} bounds must be numbers, got {args!r}")
        if not all(math.isfinite(a) for a in args):
            raise SpaceError(f"{where}: {key}: {kind} bounds must be finite numbers, got {args!r}")
        if not args[0] < args[1]:
            raise SpaceError(f"{where}: {key}: {kind} needs low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise SpaceError(f"{where}: {key}: loguniform needs low > 0, got {args!r}")
        if kind == "quniform" and args[2] <= 0:
            raise SpaceError(f"{where}: {key}: quniform needs q > 0, got {args!r}")
        if kind == "quniform" and not all(math.isclose(b / args[2], round(b / args[2])) for b in args[:2]):
            raise SpaceError(f"{where}: {key}: quniform needs low and high that are multiples of q, got {args!r}")
        if kind == "randint" and not all(float(a).is_integer() for a in args):
            raise SpaceError(f"{where}: {key}: randint bounds must be integers, got {args!r}")
    elif kind in ("choice", "grid"):
        bad = [a for a in args if isinstance(a, float) and not math.isfinite(a)]
        if bad:
            raise SpaceError(f"{where}: {key}: {kind} values must be finite, got {bad[0]!r}")


def _extremes(spec) -> list:
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return [int(args[0]), int(args[1]) - 1]  # Ray's randint excludes the upper bound
    return [args[0], args[1]]


def _section(where, raw, name, defaults) -> dict:
    values = raw.get(name) or {}
    if not isinstance(values, dict):
        raise SpaceError(f"{where}: {name}: expected a mapping")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise SpaceError(f"{where}: {name}.{unknown[0]}: unknown key; expected one of {', '.join(defaults)}")
    return {**defaults, **values}


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """--set key=value: `key` is a config key, or `search.x` / `scheduler.x` / `resources.x`."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        section, _, sub = key.rpartition(".")
        if section:
            if section not in ("search", "scheduler", "resources", "study"):
                raise SpaceError(f"--set {key}: unknown section {section!r}; expected search, scheduler, resources "
                                 f"or study")
            raw.setdefault(section, {})
            raw[section] = {**(raw[section] or {}), sub: value}
        else:
            raw.setdefault("config", {})
            raw["config"] = {**(raw["config"] or {}), key: value}
    return raw


PATH_KEYS = ("data_dir", "cache_dir", "teacher", "student_weights")


def resolve_paths(values: dict) -> None:
    """Relative data_dir / cache_dir / teacher (from --set or a space) mean the driver's working folder:
    made absolute here, before any trial starts in a folder of its own."""
    for key in PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str) and value not in ("auto", "none") and "://" not in value and not value.startswith("models:/"):
            values[key] = str(Path(value).expanduser().resolve())
    for key in ("student", "teacher_arch"):  # module:path/to/file.py:factory names a file too
        value = values.get(key)
        if isinstance(value, str) and value.startswith("module:"):
            target, sep, factory = value.removeprefix("module:").rpartition(":")
            if sep and target.endswith(".py"):
                values[key] = f"module:{Path(target).expanduser().resolve()}:{factory}"


def parse_space(name: str, overrides: dict | None = None) -> Space:
    path = resolve_space(name)
    where = path.name
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"space file {path} cannot be read as text ({type(e).__name__})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise SpaceError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: expected a mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise SpaceError(f"{where}: {unknown[0]}: unknown section; expected one of {', '.join(SECTIONS)}")
    raw = apply_overrides(raw, overrides or {})
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        raise SpaceError(f"{where}: config: expected a mapping of config keys")
    keys = set(DistillConfig.keys())
    fixed, params = {}, {}
    for key, value in config.items():
        if key not in keys:
            raise SpaceError(f"{where}: config.{key}: unknown config key{did_you_mean(key, keys)}")
        if isinstance(value, dict):
            _check_distribution(where, key, value)
            params[key] = value
        else:
            fixed[key] = value
    search = _section(where, raw, "search", SEARCH_DEFAULTS)
    scheduler = _section(where, raw, "scheduler", SCHEDULER_DEFAULTS)
    resources = _section(where, raw, "resources", RESOURCE_DEFAULTS)
    arms = _arms(where, raw.get("arms"), keys, params)
    for key in overrides or {}:  # --set and --epochs apply to every arm: the command line has the last word
        for recipe in arms.values():
            recipe.pop(key, None)
    resolve_paths(fixed)
    for recipe in arms.values():
        resolve_paths(recipe)
    space = Space(path.stem, path, text, fixed, params, search, scheduler, resources, arms,
                  description=str(raw.get("description") or "").strip(), given=set(overrides or {}))
    if raw.get("study") is not None:
        space.study = _section(where, raw, "study", STUDY_DEFAULTS)
        if scheduler["type"] != "fifo":
            space.warnings.append(f"note: {where}: a study stops nothing early; it runs under FIFO, not ASHA")
            scheduler["type"] = "fifo"
        if space.study["only"] is not None:
            space.arms = _only_arms(where, space.arms, space.study["only"])
    validate_space(space, where)
    if space.study is not None:
        make_study(space, where)
    return space


def make_study(space: Space, where: str) -> None:
    """Turn a space into a study: a grid of arms x seeds 0..N-1 under FIFO, nothing selected, the test
    split read once by each run after its last epoch."""
    st = space.study
    _positive_int(where, "study.seeds", st["seeds"])
    _positive_int(where, "study.first_seed", st["first_seed"], 0)
    if st["correction"] not in STUDY_CORRECTIONS:
        raise SpaceError(f"{where}: study.correction: {st['correction']!r}; expected one of {', '.join(STUDY_CORRECTIONS)}"
                         f"{did_you_mean(str(st['correction']), STUDY_CORRECTIONS)}")
    if space.search["searcher"] == "optuna" and space.params:
        raise SpaceError(f"{where}: study: seed replicates run fixed arms, but this space searches "
                         f"{', '.join(sorted(space.params))} with optuna; give it arms (or grid values) and "
                         f"search.searcher: grid")
    if "seed" in space.params or any("seed" in r for r in space.arms.values()):
        raise SpaceError(f"{where}: study: seed is set by study.seeds (0..N-1); do not fix or search it")
    grids = [k for k, v in space.params.items() if next(iter(v)) == "grid"]
    by = st["by"] or ("arm" if space.arms else (grids[0] if len(grids) == 1 else None))
    if by is None:
        raise SpaceError(f"{where}: study.by: name what the study compares (arm, or one of the grid keys "
                         f"{', '.join(grids) or '(none)'})")
    arm_keys = list(dict.fromkeys(k for recipe in space.arms.values() for k in recipe))
    given = st["strata"]
    if given is not None and (not isinstance(given, list) or not all(isinstance(k, str) for k in given)):
        raise SpaceError(f"{where}: study.strata: expected a list of config keys, got {given!r}")
    if by == "arm":
        if not space.arms:
            raise SpaceError(f"{where}: study.by: arm, but the space has no arms")
        values = list(space.arms)
    elif by in grids:
        values = [str(v) for v in space.params[by]["grid"]]
    elif by in arm_keys:
        # Arms that differ in more than the compared key (a teacher-student pair and a method) are
        # grouped by the keys study.strata names; each group is a comparison of its own.
        if not given:
            raise SpaceError(f"{where}: study.by: {by} is set by the arms; name the keys that group them with "
                             f"study.strata (for example [teacher_arch, student])")
        values = list(dict.fromkeys(str(getattr(DistillConfig.from_dict(c), by)) for c in space.arm_configs().values()))
    else:
        raise SpaceError(f"{where}: study.by: {by!r} is neither arm, a grid key nor a key the arms set"
                         f"{did_you_mean(by, ['arm', *grids, *arm_keys])}")
    reference = str(st["reference"]) if st["reference"] is not None else values[0]
    left_out = "; --arms (study.only) left its arms out" if st["only"] is not None else ""
    if reference not in values:
        raise SpaceError(f"{where}: study.reference: {reference!r} is not one of the compared values "
                         f"({', '.join(values)}){did_you_mean(reference, values) or left_out}")
    contrasts = _contrasts(where, st["contrasts"], values)
    if given:
        keys = set(DistillConfig.keys())
        for k in given:
            if k not in keys or k in (by, "arm", "seed"):
                raise SpaceError(f"{where}: study.strata: {k!r} is not a config key that can group arms"
                                 f"{did_you_mean(k, keys)}")
        cells = _check_strata(where, space, by, reference, given, left_out)
        strata = list(given) + [k for k in grids if k != by and k not in given]
    else:
        # The other grid dimensions are strata: an arm is paired with the reference of its own stratum.
        strata = [k for k in (["arm"] if space.arms else []) + grids if k != by]
        cells = None  # every compared value runs in every stratum
    space.study = {"seeds": st["seeds"], "by": by, "reference": reference, "arms": values, "strata": strata,
                   "correction": st["correction"], "contrasts": contrasts, "first_seed": st["first_seed"],
                   "confirms": st["confirms"], "cells": cells, "only": st["only"]}
    space.search["searcher"] = "grid" if space.search["searcher"] == "optuna" else space.search["searcher"]
    space.search["num_samples"] = 1  # the grid is the study: arms x seeds, each run once
    # A confirmation chooses among a search's configs: it reads validation only, never the test split.
    space.config["test_at_end"] = st["confirms"] is None
    space.config.setdefault("deterministic", True)  # on CUDA: the same seed, the same run (docs/studies.md)


def _contrasts(where, given, values: list[str]) -> list[list[str]] | None:
    """`study.contrasts: [[a, b], ...]`: the paired differences a - b the table reports (within each
    stratum), instead of every compared value against the reference."""
    if given is None:
        return None
    if not isinstance(given, list) or not given or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(v, (str, int, float)) for v in c) for c in given):
        raise SpaceError(f"{where}: study.contrasts: expected a list of [a, b] pairs of compared values, got {given!r}")
    out = []
    for a, b in ((str(a), str(b)) for a, b in given):
        for v in (a, b):
            if v not in values:
                raise SpaceError(f"{where}: study.contrasts: {v!r} is not one of the compared values "
                                 f"({', '.join(values)}){did_you_mean(v, values)}")
        if a == b or [a, b] in out:
            raise SpaceError(f"{where}: study.contrasts: [{a}, {b}] " + ("compares a value with itself" if a == b
                                                                           else "is given twice"))
        out.append([a, b])
    return out


def _check_strata(where, space: Space, by: str, reference: str, strata: list, left_out: str = "") -> list[list]:
    """Within each stratum every compared value appears once, and the reference is there to pair with.
    Returns the design: [[value, [stratum values]], ...], the compared values each stratum of arms holds
    (a dense arm has no channel twin: its stratum's table must not list a channel row as not run)."""
    seen: dict[tuple, list] = {}
    low = {k: _extremes(spec)[0] for k, spec in space.params.items()}  # as validate_space checked them
    for name, values in space.arm_configs().items():
        cfg = DistillConfig.from_dict({**values, **low})  # every arm passed the schema in validate_space
        stratum = tuple(str(getattr(cfg, k)) for k in strata)
        value = str(getattr(cfg, by))
        if value in seen.get(stratum, []):
            raise SpaceError(f"{where}: arms.{name}: a second arm with {by}={value} for "
                             f"{', '.join(f'{k}={v}' for k, v in zip(strata, stratum))}; each group compares each "
                             f"value once")
        seen.setdefault(stratum, []).append(value)
    for stratum, values in seen.items():
        if reference not in values:
            raise SpaceError(f"{where}: study.reference: no arm with {by}={reference} for "
                             f"{', '.join(f'{k}={v}' for k, v in zip(strata, stratum))}, so its arms have nothing "
                             f"to be paired with{left_out}")
    return [[value, list(stratum)] for stratum, values in seen.items() for value in values]


def _only_arms(where, arms: dict, only) -> dict:
    """`study.only` (--arms a,b): run these arms of the study and no others, for example the arms whose
    recipe changed since the study last ran. make_study then checks that each of them still has its
    reference arm to be paired with."""
    if isinstance(only, str):
        only = [a.strip() for a in only.split(",")]
    if not arms:
        raise SpaceError(f"{where}: study.only: the space has no arms to choose from")
    if not isinstance(only, list) or not only or not all(isinstance(a, str) and a for a in only):
        raise SpaceError(f"{where}: study.only: expected arm names, e.g. --arms {','.join(list(arms)[:2])}")
    for name in only:
        if name not in arms:
            raise SpaceError(f"{where}: study.only: no arm {name!r}{did_you_mean(name, list(arms))}; the arms are "
                             f"{', '.join(arms)}")
    if len(set(only)) != len(only):
        raise SpaceError(f"{where}: study.only: an arm is named twice ({', '.join(only)})")
    return {name: recipe for name, recipe in arms.items() if name in only}


def _arms(where, raw, keys: set, params: dict) -> dict:
    """`arms: {name: {key: value, ...}}`: each arm of a comparison with its own literature recipe."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: arms: expected a mapping of arm name -> config values")
    arms = {}
    for name, recipe in raw.items():
        recipe = recipe or {}
        if not isinstance(recipe, dict):
            raise SpaceError(f"{where}: arms.{name}: expected a mapping of config keys")
        for key, value in recipe.items():
            if key not in keys or key == "arm":
                raise SpaceError(f"{where}: arms.{name}.{key}: unknown config key")
            if isinstance(value, dict) or key in params:
                raise SpaceError(f"{where}: arms.{name}.{key}: an arm's values are fixed; {key} cannot also be searched")
        arms[str(name)] = dict(recipe)
    return arms


def _objectives(where, s: dict, study: bool) -> None:
    """search.objectives: the accuracy objective first, then the costs (docs/search-spaces.md). It sets
    the search's metric and mode, which the space must not give otherwise."""
    from tuner.pareto import ACCURACY_METRICS, COST_METRICS

    given = s["objectives"]
    if given is None:
        return
    label = f"{where}: search.objectives"
    if not isinstance(given, list) or len(given) < 2 or not all(isinstance(o, dict) for o in given):
        raise SpaceError(f"{label}: expected a list of at least two {{metric, mode}} mappings, accuracy first "
                         f"(e.g. [{{metric: val_acc, mode: max}}, {{metric: density, mode: min}}])")
    if study:
        raise SpaceError(f"{label}: a study compares fixed arms and selects nothing; objectives are for a search")
    for i, o in enumerate(given):
        if set(o) != {"metric", "mode"}:
            raise SpaceError(f"{label}[{i}]: expected exactly the keys metric and mode, got {', '.join(map(str, o))}")
        if i == 0 and o["metric"] not in ACCURACY_METRICS:
            raise SpaceError(f"{label}[0]: {o['metric']!r}; the first objective is the accuracy: "
                             f"{', '.join(ACCURACY_METRICS)}")
        if i > 0 and o["metric"] not in COST_METRICS:
            raise SpaceError(f"{label}[{i}]: {o['metric']!r}; expected a cost: {', '.join(COST_METRICS)}")
        expected = ACCURACY_METRICS[o["metric"]] if i == 0 else "min"
        if o["mode"] != expected:
            raise SpaceError(f"{label}[{i}]: {o['metric']} has mode {expected}, got {o['mode']!r}")
    costs = [o["metric"] for o in given[1:]]
    if len(set(costs)) != len(costs):
        raise SpaceError(f"{label}: a cost is listed twice")
    if s["metric"] != SEARCH_DEFAULTS["metric"] and s["metric"] != given[0]["metric"]:
        raise SpaceError(f"{where}: search.metric: {s['metric']!r} differs from the first objective "
                         f"({given[0]['metric']}); give one of them")
    s["metric"], s["mode"] = given[0]["metric"], given[0]["mode"]


def _confirm(where, s: dict, study: bool) -> None:
    """search.confirm: {top: K, seeds: N} (docs/search-spaces.md, "Confirmation")."""
    given = s["confirm"]
    if given is None:
        return
    if not isinstance(given, dict) or set(given) != {"top", "seeds"}:
        raise SpaceError(f"{where}: search.confirm: expected {{top: K, seeds: N}}, got {given!r}")
    if study:
        raise SpaceError(f"{where}: search.confirm: a study selects nothing, so there is no winner to confirm")
    _positive_int(where, "search.confirm.top", given["top"], 2)
    _positive_int(where, "search.confirm.seeds", given["seeds"], 2)


def _positive_int(where, key, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpaceError(f"{where}: {key}: expected an integer >= {minimum}, got {value!r}")


def validate_space(space: Space, where: str) -> None:
    s, sch, res = space.search, space.scheduler, space.resources
    _positive_int(where, "search.num_samples", s["num_samples"])
    _positive_int(where, "search.max_concurrent", s["max_concurrent"])
    _positive_int(where, "search.max_failures", s["max_failures"], 0)
    _positive_int(where, "search.keep_checkpoints", s["keep_checkpoints"])
    _positive_int(where, "search.seed", s["seed"], 0)
    if s["searcher"] not in ("optuna", "random", "grid"):
        raise SpaceError(f"{where}: search.searcher: {s['searcher']!r}; expected optuna, random or grid")
    _objectives(where, s, space.study is not None)
    _confirm(where, s, space.study is not None)
    if s["mode"] not in ("max", "min"):
        raise SpaceError(f"{where}: search.mode: {s['mode']!r}; expected max or min")
    if s["metric"] not in ("val_acc", "val_acc5", "val_loss"):
        raise SpaceError(f"{where}: search.metric: {s['metric']!r}; expected val_acc, val_acc5 or val_loss")
    if s["searcher"] != "grid" and any(next(iter(v)) == "grid" for v in space.params.values()):
        raise SpaceError(f"{where}: a grid distribution needs search.searcher: grid")
    if sch["type"] not in ("asha", "fifo"):
        raise SpaceError(f"{where}: scheduler.type: {sch['type']!r}; expected asha or fifo")
    if (space.config.get("test_at_end") or any(r.get("test_at_end") for r in space.arms.values())) and space.study is None:
        raise SpaceError(f"{where}: test_at_end: only a study reads the test split (add a study: section or "
                         f"--seeds N); a search never does")
    if "epochs" in space.params:
        raise SpaceError(f"{where}: config.epochs: must be fixed (it is the trial budget and ASHA's max_t)")
    if space.arms and s["searcher"] == "optuna":
        raise SpaceError(f"{where}: arms: a comparison of fixed arms needs search.searcher: grid (or random)")
    for key in ("cpu", "gpu"):
        v = res[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise SpaceError(f"{where}: resources.{key}: expected a finite number >= 0, got {v!r}")
    if res["cpu"] <= 0:
        raise SpaceError(f"{where}: resources.cpu: expected a number > 0, got {res['cpu']!r}")
    if res["gpu"] > 1 and res["gpu"] != int(res["gpu"]):
        raise SpaceError(f"{where}: resources.gpu: a fraction must be <= 1, got {res['gpu']!r}")
    # Every config the space can produce must pass the schema: try each extreme of each parameter, in every arm,
    # the other parameters at their low ends (a trial always has a value for each: shift_object needs shift).
    extremes = {k: _extremes(spec) for k, spec in space.params.items()}
    low = {k: v[0] for k, v in extremes.items()}
    arm_cfgs = {name: _checked_config(where, {**values, **low}, f"arms.{name}" if name else "config")
                for name, values in space.arm_configs().items()}
    epochs = max(c.epochs for c in arm_cfgs.values())
    if sch["max_t"] is None:
        sch["max_t"] = epochs
    _positive_int(where, "scheduler.max_t", sch["max_t"])
    _positive_int(where, "scheduler.grace_period", sch["grace_period"])
    _positive_int(where, "scheduler.reduction_factor", sch["reduction_factor"], 2)
    if sch["max_t"] > epochs:
        raise SpaceError(f"{where}: scheduler.max_t: {sch['max_t']} exceeds config.epochs ({epochs})")
    sch["grace_period"] = min(sch["grace_period"], sch["max_t"])
    for values in space.arm_configs().values():
        for key, options in extremes.items():
            for value in options:
                _checked_config(where, {**values, **low, key: value}, f"config.{key}")
        for pick in (0, -1):  # all parameters at their low ends, then at their high ends, together
            _checked_config(where, {**values, **{k: v[pick] for k, v in extremes.items()}}, "config")
    by_message: dict[str, list] = {}
    for name, cfg in arm_cfgs.items():
        for w in schedule_warnings(cfg, sch):
            by_message.setdefault(w, []).append(name)
    for w, names in by_message.items():
        label = f"arms {', '.join(names)}" if names != [None] else "config"
        space.warnings.append(f"warning: {where}: {label}: {w}")


def schedule_warnings(cfg: DistillConfig, sch: dict) -> list[str]:
    """Budget problems that are not errors: a pruning schedule compressed to fit, ASHA rungs before the
    first learning-rate decay."""
    from trainables.sparsity.schedule import schedule_fits, step_epochs

    out = []
    if cfg.prune_schedule != "one-shot" and not schedule_fits(cfg.prune_steps, cfg.prune_interval, cfg.epochs):
        last = step_epochs(cfg.prune_steps, cfg.prune_interval, cfg.epochs)[-1]
        out.append(f"{cfg.prune_schedule} pruning ({cfg.prune_steps} steps {cfg.prune_interval} epochs apart) needs "
                   f"{(cfg.prune_steps - 1) * cfg.prune_interval + 1} epochs but epochs is {cfg.epochs}; its steps are "
                   f"compressed into epochs 0..{last}, reaching the target density there")
    if sch["type"] == "asha" and cfg.lr_schedule == "multistep" and cfg.lr_milestones:
        first_decay = max(1, round(min(cfg.lr_milestones) * cfg.epochs))
        rungs, r = [], sch["grace_period"]
        while r < sch["max_t"]:
            rungs.append(r)
            r *= sch["reduction_factor"]
        if rungs and all(r <= first_decay for r in rungs):
            out.append(f"every ASHA rung (epochs {', '.join(map(str, rungs))}) falls before the first lr decay (epoch "
                       f"{first_decay}), so early stopping compares pre-decay accuracies; use lr_schedule: cosine")
    return out


def _checked_config(where, values: dict, label: str) -> DistillConfig:
    try:
        cfg = DistillConfig.from_dict(values)
        if cfg.dataset in NUM_CLASSES or cfg.dataset == "synthetic":
            nc = NUM_CLASSES.get(cfg.dataset, cfg.synthetic_classes)
            check_feature_config(cfg, nc, cfg.shift or cfg.image_size or 32)
    except ConfigError as e:
        raise SpaceError(f"{where}: {label}: {e}") from None
    return cfg


def teacher_key(values) -> str:
    """The key of one combination of grid values in Space.teacher_for."""
    return json.dumps(list(values), default=str)


def study_seeds(study: dict) -> list[int]:
    """The seeds every arm of a study runs with: first_seed, first_seed + 1, ... (first_seed is 0 except
    in a confirmation, which takes seeds its search did not use)."""
    return list(range(study.get("first_seed", 0), study.get("first_seed", 0) + study["seeds"]))


def to_param_space(space: Space) -> dict:
    """Fixed values as they are, distributions as Ray Tune domains."""
    from ray import tune

    out = dict(space.config)
    if space.study is not None:
        out["seed"] = tune.grid_search(study_seeds(space.study))
    if space.arms:
        # One grid value per arm; every key an arm sets is resolved from the chosen arm's recipe.
        arms = space.arm_configs()
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                    for f in dataclasses.fields(DistillConfig)}
        out["arm"] = tune.grid_search(list(arms))
        for key in sorted({k for recipe in space.arms.values() for k in recipe}):
            out[key] = tune.sample_from(lambda config, key=key: arms[config["arm"]].get(key, defaults[key]))
    if space.teacher_for is not None:  # each trial gets the teacher trained on its own data
        keys, teachers = space.teacher_for
        out["teacher"] = tune.sample_from(lambda config: teachers[teacher_key(config[k] for k in keys)])
    for key, spec in space.params.items():
        kind, args = next(iter(spec.items()))
        out[key] = {
            "uniform": lambda a: tune.uniform(a[0], a[1]),
            "loguniform": lambda a: tune.loguniform(a[0], a[1]),
            "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
            "randint": lambda a: tune.randint(int(a[0]), int(a[1])),
            "choice": lambda a: tune.choice(list(a)),
            "grid": lambda a: tune.grid_search(list(a)),
        }[kind](args)
    return out
