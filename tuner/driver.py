"""The body of a search once its input is validated: teacher, MLflow parent run, Tuner, results."""
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from trainables import SFKDTrainable
from trainables.config import DistillConfig
from trainables.data.shift import SHIFT_BACKGROUND
from trainables.inputs import SPLIT_KEYS, TrialInputs, load_run_splits, split_args, splits_bytes
from trainables.models.sources import file_slug
from trainables.ray_trainable import CHECKPOINT_FILE
from trainables.sparsity.sparse_checkpoint import read_header
from trainables.teacher_file import check_worth_distilling, read_teacher_file
from tuner.best_config import write_best_config
from tuner.callbacks import MLflowTrialCallback, PrintCallback
from tuner.optuna_study import STUDY_ARTIFACT_DIR, STUDY_FILE, build_optuna_searcher
from tuner.pareto import CostFloorASHA, front, front_table, objective_values, objectives_of, objectives_param
from tuner.progress import TrialPrinter
from tuner.ranking import ranked, score_of
from tuner.search_report import log_report
from tuner.spaces import teacher_key, to_param_space
from tuner.storage import RunStorage
from tuner.study import IN_SPACE_FILE as STUDY_IN_SPACE_FILE
from tuner.study import TABLE_MD as STUDY_TABLE_MD
from tuner.teacher_training import teacher_config, train_teacher_on_ray
from tuner.tracking import PARAM_CHARS, PENDING_FILE, UNREADABLE_FILE, SearchTracker, check_tracking_store, normalise_uri


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


TEACHER_RECIPE_KEYS = ("teacher", "teacher_arch", "teacher_epochs", "dataset", "data_dir", "split_seed", "val_fraction",
                       "train_subset", "synthetic_size", "synthetic_classes", "image_size", "shift", "shift_object",
                       "batch_size", "bn_recalibrate", "teacher_lr_schedule")


# Data keys a teacher must share with its students: a grid over them with `teacher: auto` trains one
# teacher per value (shifted data gets a teacher trained on shifted data).
TEACHER_DATA_KEYS = ("shift", "shift_object", "image_size")


def _teacher_per_grid_value(space, keys: list[str], storage: RunStorage, inputs: TrialInputs) -> list:
    """One auto teacher per combination of the grid values of `keys`; each trial is given the one of its
    own values (space.teacher_for, read by to_param_space)."""
    import itertools

    for k in keys:
        if next(iter(space.params[k])) != "grid":
            raise ValueError(f"{k} is searched with {next(iter(space.params[k]))}; with teacher: auto give it grid "
                             f"values, and each value gets its own teacher")
    teachers, mapping = [], {}
    for combo in itertools.product(*(space.params[k]["grid"] for k in keys)):
        path, acc = _auto_teacher(space, {**space.config, **dict(zip(keys, combo))}, storage, inputs)
        teachers.append((path, acc))
        mapping[teacher_key(combo)] = str(path)
    space.teacher_for = (list(keys), mapping)
    return teachers


def _data_note(cfg) -> str:
    """' (shift 48)': the data keys that tell one auto teacher of a search from another."""
    said = [f"{k} {getattr(cfg, k)}" for k in TEACHER_DATA_KEYS if getattr(cfg, k) is not None]
    return f" ({', '.join(said)})" if said else ""


def resolve_teacher(space, storage: RunStorage, inputs: TrialInputs) -> list[tuple[Path, float]]:
    """`teacher: auto` -> train each dense teacher once (cached by its recipe, in the storage) as a Ray
    task and return [(file, test top-1)]: one teacher, or one per teacher recipe when study arms set
    their own (a study of several teacher-student pairs), written into those arms. A teacher too weak to
    distil from stops the search here, before anything is recorded."""
    cfg = space.config
    for values in [cfg, *space.arms.values()]:
        if values.get("teacher", "auto") not in ("auto", "none"):
            values["teacher"] = str(Path(values["teacher"]).expanduser().resolve())
    own = [name for name, recipe in space.arms.items() if any(k in recipe for k in TEACHER_RECIPE_KEYS)]
    gridded = [k for k in TEACHER_DATA_KEYS if k in space.params]
    if gridded and cfg.get("teacher", "auto") == "auto" and not own:
        return _teacher_per_grid_value(space, gridded, storage, inputs)
    if not own:
        return [_auto_teacher(space, cfg, storage, inputs)] if cfg.get("teacher", "auto") == "auto" else []
    teachers = {}  # recipe -> (file, test top-1): arms with the same teacher recipe share one teacher
    for name, values in space.arm_configs().items():
        if values.get("teacher", "auto") != "auto":
            continue
        recipe = json.dumps([values.get(k) for k in TEACHER_RECIPE_KEYS], default=str)
        if recipe not in teachers:
            teachers[recipe] = _auto_teacher(space, values, storage, inputs)
        space.arms[name]["teacher"] = str(teachers[recipe][0])  # an arm key: no trial of this arm sees auto
    return list(teachers.values())


def auto_teacher_file(tcfg: DistillConfig) -> str:
    """Where an auto teacher of this recipe is cached in a search's storage: named by a hash of the recipe,
    and for shifted data of the canvases' definition too (it is part of the teacher's data; unshifted
    files keep the keys they had)."""
    identity = tcfg.to_dict()
    if tcfg.shift is not None:
        identity["shift_background"] = SHIFT_BACKGROUND
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"teachers/{file_slug(tcfg.student)}-{tcfg.dataset}-e{tcfg.epochs}-train-{key}.pt"


def _auto_teacher(space, values: dict, storage: RunStorage, inputs: TrialInputs) -> tuple[Path, float]:
    for key in ("teacher_arch", "teacher_epochs", "dataset", "split_seed", "val_fraction"):
        if key in space.params:
            raise ValueError(f"{key} must be fixed when teacher is auto")
    base = DistillConfig.from_dict(values)
    # --epochs runs small, teacher included, unless --set teacher_epochs asks for a budget of its own
    epochs = base.teacher_epochs if "teacher_epochs" in space.given else min(base.teacher_epochs, base.epochs)
    # The teacher of a search trains on the training split only (it never sees the validation images);
    # one teacher serves every seed of the search, so it takes its own seed, not the students'.
    recipe = dict(dataset=base.dataset, data_dir=base.data_dir, seed=0, batch_size=base.batch_size,
                  train_subset=base.train_subset, synthetic_size=base.synthetic_size, split_seed=base.split_seed,
                  val_fraction=base.val_fraction, synthetic_classes=base.synthetic_classes, image_size=base.image_size,
                  shift=base.shift, shift_object=base.shift_object)
    if base.bn_recalibrate is not None:  # evaluated under the same BatchNorm policy as its students
        recipe["bn_recalibrate"] = base.bn_recalibrate
    if base.teacher_lr_schedule is not None:  # left out otherwise: the recipe's own, and cached files keep their key
        recipe["lr_schedule"] = base.teacher_lr_schedule
    tcfg = teacher_config(base.teacher_arch, base.dataset, epochs, **{k: v for k, v in recipe.items() if k != "dataset"})
    rel = auto_teacher_file(tcfg)
    path = storage.local_root / rel
    if path.exists() or storage.exists(rel):
        storage.fetch(rel, path)
        acc = read_teacher_file(path)["test_acc"]
        print(f"teacher {base.teacher_arch}{_data_note(base)}: cached {path.name} (test top-1 {acc:.2f}%)", flush=True)
    else:
        res = space.resources
        path, acc = train_teacher_on_ray(tcfg, path, "train", res["cpu"], res["gpu"], data=inputs.data_for(tcfg, train_only=True))
        storage.publish(path, rel)
        print(f"teacher {base.teacher_arch}{_data_note(base)}: trained for {epochs} epochs, test top-1 {acc:.2f}% -> "
              f"{storage.uri(rel)}", flush=True)
    values["teacher"] = str(path)
    info = read_teacher_file(path)
    # A teacher cached by an older version recorded test accuracy only; it passed the gate on that when it
    # was trained, and is not judged again.
    if "val_acc" in info:
        check_worth_distilling(info["val_acc"], f"{base.teacher_arch} (auto, {epochs} epochs)", info["num_classes"])
    if "object_attention" in info:  # shifted data: whether the central square is really the wrong guess
        from tuner.teacher import object_attention_line

        print(f"teacher {base.teacher_arch}{_data_note(base)}: {object_attention_line(info['object_attention'])}",
              flush=True)
    return path, acc


SHIP_MAX_BYTES = 2e9  # decoded splits above this stay on each node's disk (an ImageNet-size ImageFolder)


def ship_data(space, data=None) -> TrialInputs:
    """The data splits every trial (and the auto teacher) receives through Ray's object store, so that
    no node needs the driver's files. Searched data keys and data too large for the object store are
    left to each trial to read by path."""
    inputs = TrialInputs()
    if not any(k in space.params for k in SPLIT_KEYS):
        base = DistillConfig.from_dict(space.config)
        data = data if data is not None else load_run_splits(base)
        size = splits_bytes(data)
        if size <= SHIP_MAX_BYTES:
            inputs.data, inputs.data_args = data, split_args(base)
        else:
            print(f"data: {size / 1e9:.1f} GB decoded, over the object store's {SHIP_MAX_BYTES / 1e9:.0f} GB share: "
                  f"every node reads it from {base.data_dir}", flush=True)
    return inputs


def ship_teacher(space, inputs: TrialInputs) -> None:
    """The bytes of every teacher file the trials name go with the data, so no worker needs the files
    (study arms may differ in method, so they go whenever the search names fixed teacher files)."""
    if "teacher" in space.params:
        return
    for teacher in (space.teacher_for[1].values() if space.teacher_for is not None else []):
        inputs.teachers[teacher] = Path(teacher).read_bytes()
    for values in [space.config, *space.arms.values()]:
        teacher = values.get("teacher", "auto")
        if teacher not in ("auto", "none"):
            inputs.teachers[teacher] = Path(teacher).read_bytes()


def reuse_actors() -> bool:
    """Reuse trial processes on one machine (it saves their start-up). On a cluster, a cached process
    on a node that died is handed the next trial, which then fails at once, and can fail again
    until Ray has noticed the node is gone: seen here losing a trial when a worker node was killed."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) <= 1


def build_searcher(space, run_dir: Path | None, name: str):
    s = space.search
    if s["searcher"] == "optuna":
        searcher = build_optuna_searcher(space, run_dir / STUDY_FILE if run_dir else None, name)
        return ConcurrencyLimiter(searcher, max_concurrent=s["max_concurrent"])
    return BasicVariantGenerator(random_state=s["seed"], max_concurrent=s["max_concurrent"])


def check_buildable(space) -> None:
    """Build what Ray Tune and Optuna will be given, and sample every distribution once, before the
    search records anything: a value Ray or Optuna refuses (a bound Ray cannot quantise, a seed Optuna
    cannot use) is then one line and exit 2, not a traceback after the MLflow parent run and
    search.json exist. Nothing is written: the study is held in memory."""
    from ray.tune.search.sample import Domain, Function

    from tuner.spaces import SpaceError

    try:
        param_space = to_param_space(space)
        for value in param_space.values():
            if isinstance(value, Domain) and not isinstance(value, Function):  # sample_from needs a config
                value.sample()
        searcher = build_searcher(space, None, space.name)
        if space.search["searcher"] == "optuna":
            searcher.set_search_properties(None, None, param_space)
            searcher.suggest("check")
        build_scheduler(space)
    except SpaceError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever Ray or Optuna refuses is the space's fault here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpaceError(f"{space.path.name}: the search cannot be built from this space: {first}") from None


def build_scheduler(space):
    sch = space.scheduler
    if sch["type"] == "fifo":
        return FIFOScheduler()
    # ASHA compares trials by the metric at its rung's epoch; Optuna (and the final pick) by the best so far.
    objectives = objectives_of(space.search)
    if objectives:  # a cheaper trial is compared only with trials that cost no more (docs/decisions.md)
        return CostFloorASHA("epoch", space.search["metric"], space.search["mode"],
                             [o["metric"] for o in objectives[1:]], sch["max_t"], sch["grace_period"],
                             sch["reduction_factor"])
    return ASHAScheduler(time_attr="epoch", max_t=sch["max_t"], grace_period=sch["grace_period"],
                         reduction_factor=sch["reduction_factor"], metric=space.search["metric"],
                         mode=space.search["mode"])


def run_search(space, storage: RunStorage, name: str, args, argv: list[str], resume: dict | None = None,
               data=None) -> int:
    """Run (or, with `resume` = the saved search.json, continue) one search. `data`: the splits the
    preflight already loaded."""
    run_dir = storage.local(name)
    uri = normalise_uri(args.tracking_uri) if args.tracking_uri or not resume else resume["tracking_uri"]
    check_tracking_store(uri)
    inputs = ship_data(space, data)
    teacher = resolve_teacher(space, storage, inputs)
    ship_teacher(space, inputs)
    trainable = tune.with_parameters(SFKDTrainable, inputs=inputs)
    experiment = resume["experiment"] if resume else (getattr(args, "experiment", None) or space.name)
    tracker = SearchTracker(uri, experiment=experiment, run_dir=run_dir)
    if tracker.unreadable:
        print(f"warning: lines {', '.join(map(str, tracker.unreadable))} of {run_dir / PENDING_FILE} are not complete "
              f"writes (cut off) and cannot be sent; kept in {run_dir / UNREADABLE_FILE}", file=sys.stderr)
    if resume:
        tracker.resume_parent(resume["parent_run_id"])
        print(f"search {name}: resuming MLflow run {tracker.parent_id} ({len(tracker.children)} trials recorded)",
              flush=True)
    else:
        params = {"space": space.name, "argv": " ".join(argv), "storage": storage.uri(name),
                  **{f"search.{k}": v for k, v in space.search.items() if k != "objectives"},
                  **{f"scheduler.{k}": v for k, v in space.scheduler.items()},
                  **{f"resources.{k}": v for k, v in space.resources.items()}}
        if objectives_of(space.search):
            params["search.objectives"] = objectives_param(objectives_of(space.search))
        if space.study is not None:
            params.update({"study.seeds": space.study["seeds"], "study.compare_by": space.study["by"],
                           "study.reference": space.study["reference"], "study.arms": ",".join(space.study["arms"]),
                           "study.strata": ",".join(space.study["strata"]),
                           "study.correction": space.study["correction"]})
            if space.study["first_seed"]:
                params["study.first_seed"] = space.study["first_seed"]
            if space.study["confirms"]:
                params["study.confirms"] = space.study["confirms"]
            if space.study["only"]:  # --arms: the space file logged below holds more arms than ran
                params["study.only"] = ",".join(space.study["only"])
            # The design ("null" cells: every value in every stratum). One longer than a param holds would
            # be cut (a confirmation of 6 configs has 15 contrasts): the table reads it from the space file.
            for key in ("contrasts", "cells"):
                if key == "cells" or space.study[key] is not None:
                    value = json.dumps(space.study[key])
                    params[f"study.{key}"] = value if len(value) <= PARAM_CHARS else STUDY_IN_SPACE_FILE
        tracker.start_parent(name, params, {"sfkd.kind": "search", "sfkd.space": space.name,
                                            "mlflow.note.content": space.description or f"search of space {space.name}",
                                            "sfkd.study": str(space.study is not None).lower(),
                                            "sfkd.code_version": code_version()})
        tracker.log_text(tracker.parent_id, space.text, f"space/{space.path.name}")
        state = {"space": space.name, "space_file": str(space.path), "parent_run_id": tracker.parent_id,
                 "tracking_uri": uri, "experiment": experiment, "argv": argv}
        storage.write_text(f"{name}/search.json", json.dumps(state, indent=2))
        print(f"search {name}: MLflow run {tracker.parent_id} in experiment '{experiment}' at {uri}", flush=True)
    try:
        return _search_recorded(space, storage, name, args, resume, state if not resume else resume, teacher,
                                trainable, tracker)
    except BaseException as e:
        mark_ended_by(tracker, e)
        raise


def _search_recorded(space, storage: RunStorage, name: str, args, resume, state: dict, teacher, trainable,
                     tracker: SearchTracker) -> int:
    """The part of a search that runs once its parent run exists: the Tuner, its results, the ending."""
    run_dir = storage.local(name)
    if storage.remote:  # tuner.sync --run-dir reads it from this machine's folder of the run
        (run_dir / "search.json").write_text(json.dumps(state, indent=2))
    if teacher and not resume:
        if len(teacher) == 1:
            tracker.log_metrics(tracker.parent_id, {"teacher_test_acc": teacher[0][1]}, step=0)
        else:  # one per teacher of a study of several pairs, named by its file
            tracker.log_metrics(tracker.parent_id, {f"teacher_test_acc.{path.stem}": acc for path, acc in teacher},
                                step=0)
        for path, _ in teacher:
            tracker.log_artifact(tracker.parent_id, str(path), "teacher")
        tracker.set_tags(tracker.parent_id, {"sfkd.teacher": ",".join(path.name for path, _ in teacher)})

    s, sch = space.search, space.scheduler
    printer = TrialPrinter(sch["max_t"], s["metric"], s["mode"])
    mlflow_callback = MLflowTrialCallback(tracker, sch["max_t"])
    callbacks = [mlflow_callback]
    if not args.quiet:
        callbacks.append(PrintCallback(printer))
    resources = {"cpu": space.resources["cpu"], "gpu": space.resources["gpu"]}
    if resume:
        # The space goes in again: Ray saves a study's per-arm values (sample_from) as placeholders, and
        # without it every trial created after the restore would get those placeholders for values.
        tuner = tune.Tuner.restore(storage.uri(name), tune.with_resources(trainable, resources),
                                   resume_unfinished=True, resume_errored=True, param_space=to_param_space(space))
        # The restored run config holds the callbacks pickled at the start; use this process's.
        tuner._local_tuner.get_run_config().callbacks = callbacks
    else:
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=to_param_space(space),
            tune_config=tune.TuneConfig(search_alg=build_searcher(space, run_dir, name),
                                        scheduler=build_scheduler(space), num_samples=s["num_samples"],
                                        reuse_actors=reuse_actors()),
            run_config=tune.RunConfig(
                name=name, storage_path=storage.location, callbacks=callbacks, verbose=0,
                stop={"epoch": sch["max_t"]},
                checkpoint_config=tune.CheckpointConfig(num_to_keep=s["keep_checkpoints"],
                                                        checkpoint_score_attribute=s["metric"],
                                                        checkpoint_score_order=s["mode"]),
                failure_config=tune.FailureConfig(max_failures=s["max_failures"])),
        )
    tracker.start_writer()  # from here on, no MLflow call runs on Tune's controller thread
    try:
        with Interruption() as interruption:
            results = tuner.fit()
    finally:
        tracker.stop_writer()
    mlflow_callback.on_experiment_end(trials=[])  # Ray has saved its final state: record what still waits
    if interruption.signal:
        return record_interruption(interruption.signal, tracker, mlflow_callback, storage, name, args)
    if resume:
        mlflow_callback.reconcile(results)
        mlflow_callback.drain()
    rc = finish(space, results, tracker, storage, name)
    if rc == 0 and space.study is None and space.search.get("confirm"):
        return confirm_winners(space, results, tracker, storage, name, args)
    return rc


def confirm_winners(space, results, tracker: SearchTracker, storage: RunStorage, name: str, args) -> int:
    """search.confirm: the K best configs again with N new seeds, as a study of their own (tuner.confirm)."""
    from tuner.confirm import chosen, run_confirmation

    metric, mode = space.search["metric"], space.search["mode"]
    best_first = [r for _, _, r in ranked(((result_score(r, metric), (r.metrics or {}).get("trial_id", ""), r)
                                            for r in results), mode)]
    picked = chosen(space, best_first)
    if len(picked) < 2:
        print(f"confirmation skipped: it compares at least 2 configs and the search finished {len(picked)}",
              file=sys.stderr)
        return 0
    return run_confirmation(space, picked, tracker, storage, name, args)


def mark_ended_by(tracker: SearchTracker, error: BaseException) -> None:
    """A search that stops on an exception after its parent run exists never leaves it RUNNING: FAILED
    with the reason, or KILLED for a second Ctrl-C (the first is Ray Tune's graceful stop)."""
    if tracker.parent_id is None or tracker.parent_id.startswith("pending-"):
        return
    if isinstance(error, KeyboardInterrupt):
        tracker.set_tags(tracker.parent_id, {"sfkd.status": "interrupted", "sfkd.reason": "interrupted twice"})
        tracker.end(tracker.parent_id, "KILLED")
    else:
        reason = f"{type(error).__name__}: {error}".strip()[:500]
        tracker.set_tags(tracker.parent_id, {"sfkd.status": "error", "sfkd.reason": reason})
        tracker.end(tracker.parent_id, "FAILED")
    tracker.flush()


class Interruption:
    """Ctrl-C (SIGINT) or SIGTERM while Ray Tune runs the trials: an interruption, not a result.

    Tune catches the first SIGINT itself: it stops the trials, saves its state (what --resume restores)
    and returns from fit() as if the search had ended. It then puts back the handler it found, which is
    this one, so afterwards this handler being in place again says Tune caught a Ctrl-C. SIGTERM is
    turned into that same graceful stop. A second signal while Tune stops raises KeyboardInterrupt."""

    def __init__(self):
        self.signal: str | None = None

    def __enter__(self):
        self._before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigint(self, signum, frame):
        self.signal = self.signal or "SIGINT"
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame):
        self.signal = "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own stop (or, once it has stopped, _on_sigint)

    def __exit__(self, *exc):
        if signal.getsignal(signal.SIGINT) == self._on_sigint:  # Tune caught one and gave this handler back
            self.signal = self.signal or "SIGINT"
        signal.signal(signal.SIGINT, self._before[0])
        signal.signal(signal.SIGTERM, self._before[1])
        return False


EXIT_ON = {"SIGINT": 130, "SIGTERM": 143}


def resume_command(args, storage: RunStorage, name: str) -> str:
    return " ".join(shlex.quote(p) for p in ["python", "-m", "tuner.search", "--space", args.space,
                                              "--storage-path", storage.location, "--name", name, "--resume"])


def record_interruption(signame: str, tracker: SearchTracker, callback, storage: RunStorage, name: str, args) -> int:
    """An interrupted search: the parent run and every trial still running end KILLED, tagged
    interrupted; no best config, no report; the one command that resumes it is printed."""
    callback.drain()
    for trial_id, run_id in tracker.children.items():
        # A trial whose ending is recorded, by this process or by the one a resume continues, keeps it.
        if trial_id not in callback.recorded and trial_id not in tracker.ended_before:
            tracker.set_tags(run_id, {"sfkd.status": "interrupted"})
            tracker.end(run_id, "KILLED")
    tracker.set_tags(tracker.parent_id, {"sfkd.status": "interrupted", "sfkd.reason": f"{signame} received"})
    tracker.end(tracker.parent_id, "KILLED")
    report_pending(tracker, storage.local(name))
    print(f"interrupted ({signame}): search {name} stopped with its state saved; nothing was exported. Resume it "
          f"with: {resume_command(args, storage, name)}", file=sys.stderr, flush=True)
    return EXIT_ON[signame]


def result_score(result, metric: str) -> float | None:
    """A Ray result's score under the ranking rule; None for a trial that failed or diverged."""
    last = result.metrics or {}
    return None if result.error is not None or last.get("status") == "diverged" else score_of(last, metric)


def best_existing_checkpoint(result, metric: str, mode: str):
    """The trial's best checkpoint by `metric` that is still in the storage, else its latest one that is.
    A search resumed from a Ray snapshot older than the killed driver's last checkpoints can list one
    that the killed run had already deleted or written over (Ray then logs "Error handling checkpoint"
    for its own bookkeeping): seen in the outage-and-kill test, where reading it failed the search."""
    import pyarrow.fs as pafs

    worst = float("-inf") if mode == "max" else float("inf")
    ranked_ckpts = sorted(result.best_checkpoints or [], key=lambda cm: cm[1].get(metric, worst), reverse=mode == "max")
    for ckpt in [c for c, _ in ranked_ckpts] + [result.checkpoint]:
        if ckpt is not None and ckpt.filesystem.get_file_info(f"{ckpt.path}/{CHECKPOINT_FILE}").type == pafs.FileType.File:
            return ckpt
    return None


def finish(space, results, tracker: SearchTracker, storage: RunStorage, name: str) -> int:
    """Upload the best trials' checkpoints, write best_config.yaml, close the parent run."""
    run_dir = storage.local(name)
    if space.study is not None:
        return finish_study(space, results, tracker, storage, name)
    metric, mode = space.search["metric"], space.search["mode"]
    publish_study(tracker, storage, name)
    best_first = ranked(((result_score(r, metric), (r.metrics or {}).get("trial_id", ""), r) for r in results), mode)
    if not best_first:
        tracker.end(tracker.parent_id, "FAILED")
        print("no trial finished; nothing to export", file=sys.stderr)
        report_pending(tracker, run_dir)
        return 1
    for _, _, r in best_first[:space.search["keep_checkpoints"]]:
        ckpt = best_existing_checkpoint(r, metric, mode)
        trial_id = r.metrics["trial_id"]
        run_id = tracker.children.get(trial_id)
        if ckpt is None or run_id is None:
            continue
        with ckpt.as_directory() as folder:  # downloaded from the storage when it is remote
            f = Path(folder) / CHECKPOINT_FILE
            head, _ = read_header(f)
            tracker.log_artifact(run_id, str(f), "checkpoint")
            tracker.set_tags(run_id, {"sfkd.checkpoint.density": f"{head['measured_density']:.6f}",
                                      "sfkd.checkpoint.nonzero_params": head["nonzero_params"],
                                      "sfkd.checkpoint.size_bytes": f.stat().st_size})
    used = sorted({r.metrics.get("precision") for _, _, r in best_first if r.metrics.get("precision")})
    if len(used) > 1:  # `precision: auto` resolves per machine; a mixed cluster compares unlike arms
        print(f"warning: trials ran at different precisions ({', '.join(used)}); set precision: fp32 or bf16 "
              f"to compare them at one", file=sys.stderr)
    best_value, _, best = best_first[0]
    config = {k: v for k, v in best.config.items()}
    best_ckpt = best_existing_checkpoint(best, metric, mode)
    in_store = storage.relative(best_ckpt.path) if best_ckpt is not None else None
    out = write_best_config(run_dir / "best_config.yaml", config, search_run_id=tracker.parent_id,
                            experiment=tracker.experiment, trial_id=best.metrics["trial_id"],
                            **{metric: round(best_value, 4)}, storage_path=storage.location,
                            checkpoint=storage.uri(in_store, CHECKPOINT_FILE) if in_store else None)
    storage.publish(out, f"{name}/best_config.yaml")
    tracker.log_artifact(tracker.parent_id, str(out))
    tracker.log_metrics(tracker.parent_id, {f"best_{metric}": best_value,
                                            "trials_finished": len(best_first), "trials_total": len(results)}, step=0)
    tracker.set_tags(tracker.parent_id, {"sfkd.best_trial": best.metrics["trial_id"]})
    print(f"best trial {best.metrics['trial_id']}: {metric} {best_value:.2f}; best config -> {out}", flush=True)
    if objectives_of(space.search):
        record_front(objectives_of(space.search), [r for _, _, r in best_first], tracker)
    try:
        report = log_report(tracker, run_dir / "report")
        storage.publish(run_dir / "report", f"{name}/report")
        print(f"report: {report[-1]}", flush=True)
    except Exception as e:  # noqa: BLE001 - the results are recorded; the report can be rebuilt later
        print(f"warning: report not built ({type(e).__name__}: {e}); rebuild it with "
              f"python -m tuner.report --run {tracker.parent_id} --tracking-uri {tracker.uri}", file=sys.stderr)
    tracker.end(tracker.parent_id)
    report_pending(tracker, run_dir)
    ui_uri = tracker.uri if not tracker.uri.startswith(("http://", "https://")) else None
    print("next:", flush=True)
    if ui_uri:
        print(f"  mlflow ui --backend-store-uri {ui_uri} --host 127.0.0.1    # review the trials", flush=True)
    if objectives_of(space.search):
        cost = objectives_of(space.search)[1]["metric"]
        print(f"  python -m tuner.export --run {tracker.parent_id} --tracking-uri {tracker.uri} --max {cost}=VALUE "
              f"--out best.yaml    # the most accurate trial within a budget", flush=True)
    else:
        print(f"  python -m tuner.export --run {tracker.parent_id} --tracking-uri {tracker.uri} --out best.yaml"
              f"    # the best config again, from MLflow alone", flush=True)
    print(f"  python -m tuner.final --config {out} --tracking-uri {tracker.uri}    # train it on train+val, test it",
          flush=True)
    return 0


def record_front(objectives: list[dict], finished: list, tracker: SearchTracker) -> None:
    """A search with several objectives: every finished trial's child run is tagged `sfkd.pareto` true
    or false, the parent run gets the front's size and trial ids, and the front is printed."""
    entries = [(objective_values(r.metrics or {}, objectives), r.metrics["trial_id"], r) for r in finished]
    on_front = front(entries, objectives)
    ids = {trial_id for _, trial_id, _ in on_front}
    for _, trial_id, _ in entries:
        if trial_id in tracker.children:
            tracker.set_tags(tracker.children[trial_id], {"sfkd.pareto": str(trial_id in ids).lower()})
    tracker.set_tags(tracker.parent_id, {"sfkd.pareto_trials": ",".join(t for _, t, _ in on_front)})
    tracker.log_metrics(tracker.parent_id, {"pareto_size": len(on_front)}, step=0)
    names = ", ".join(o["metric"] for o in objectives)
    print(f"front ({names}): {len(on_front)} of {len(entries)} finished trials are not beaten in every objective by "
          f"another\n{front_table([(v, t) for v, t, _ in on_front], objectives)}", flush=True)


def finish_study(space, results, tracker: SearchTracker, storage: RunStorage, name: str) -> int:
    """A study selects nothing: no best config, no checkpoint upload. It writes its comparison table
    (Markdown, HTML, figure) to the parent run and prints it."""
    run_dir = storage.local(name)
    publish_study(tracker, storage, name)
    ok = [r for r in results if r.error is None and (r.metrics or {}).get("status") == "ok"]
    tracker.log_metrics(tracker.parent_id, {"runs_finished": len(ok), "runs_total": len(results)}, step=0)
    try:
        files = log_report(tracker, run_dir / "report")
        storage.publish(run_dir / "report", f"{name}/report")
        table = next(f for f in files if f.name == STUDY_TABLE_MD).read_text()
        print(f"study {space.name}: {len(ok)} of {len(results)} runs finished; compared by {space.study['by']} "
              f"against {space.study['reference']}\n\n{table}\nreport: {files[-1]}", flush=True)
        if space.study["confirms"] and ok:
            from tuner.confirm import record_confirmation

            record_confirmation(tracker, storage, name)
    except Exception as e:  # noqa: BLE001 - the runs are recorded; the table can be rebuilt from MLflow
        print(f"warning: study table not built ({type(e).__name__}: {e}); rebuild it with "
              f"python -m tuner.report --run {tracker.parent_id} --tracking-uri {tracker.uri}", file=sys.stderr)
    tracker.end(tracker.parent_id, "FINISHED" if ok else "FAILED")
    report_pending(tracker, run_dir)
    return 0 if ok else 1


def publish_study(tracker: SearchTracker, storage: RunStorage, name: str) -> None:
    """The Optuna study (optuna.db) goes to the storage and to the parent run, where the report reads it."""
    path = storage.local(name) / STUDY_FILE
    if path.exists():
        storage.publish(path, f"{name}/{STUDY_FILE}")
        tracker.log_artifact(tracker.parent_id, str(path), STUDY_ARTIFACT_DIR)


def report_pending(tracker: SearchTracker, run_dir: Path) -> None:
    left = tracker.flush()
    if left:
        print(f"warning: {left} MLflow writes could not be sent to {tracker.uri}; they are kept in "
              f"{run_dir / 'mlflow_pending.jsonl'}: run python -m tuner.sync --run-dir {run_dir}", file=sys.stderr)
