"""python -m tuner.search --space NAME: the sparse-KD hyperparameter search on Ray Tune."""
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

from tuner.cli import OneLineParser, parse_sets, quiet_libraries, run_cli
from tuner.errors import ServiceError, UsageError
from tuner.registered_teacher import resolve_registered_teacher
from tuner.spaces import available_spaces, parse_space
from tuner.storage import RunStorage, check_run_name, read_run_state
from tuner.tracking import check_tracking_store, normalise_uri

DEFAULT_STORAGE = "sfkd_runs"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m tuner.search", description=(
        "Run a sparse-student distillation search: Optuna proposes configs, ASHA stops weak trials, "
        "trials share CPUs/GPUs through Ray, and MLflow records every trial under one parent run. "
        f"Spaces: {', '.join(available_spaces())}."))
    p.add_argument("--space", required=True, help="space name in search_spaces/ or a path to a .yaml file")
    p.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    p.add_argument("--epochs", type=int, help="epochs per trial; also ASHA's max_t and the cap on an auto "
                   "teacher's budget (unless --set teacher_epochs=N gives it)")
    p.add_argument("--dataset", help="cifar10, cifar100, imagefolder or synthetic")
    p.add_argument("--data-dir", help="data folder (ImageFolder tree, torchvision files, or a .tar.gz of a tree)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (resources.cpu)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, e.g. 0.25 (resources.gpu)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (search.max_concurrent)")
    p.add_argument("--seeds", type=int, help=(
        "run every arm with seeds 0..N-1 as a study (study.seeds): FIFO, nothing selected, a comparison table "
        "with paired differences, and each finished run's test accuracy"))
    p.add_argument("--arms", metavar="A,B", help=(
        "run only these arms of a study (study.only), e.g. the arms whose recipe changed; each must keep the "
        "reference arm it is paired with"))
    p.add_argument("--confirm", metavar="K,N", type=confirm_flag, help=(
        "after the search, run its K best configs again with N new seeds each (K x N more runs, FIFO, "
        "validation only) and export the best mean (search.confirm: {top: K, seeds: N}); off by default"))
    p.add_argument("--address", help="join a running Ray cluster, e.g. 10.0.0.1:6379 (default: local Ray)")
    p.add_argument("--tracking-uri", help=(
        "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder)"))
    p.add_argument("--experiment", help="MLflow experiment to record the search in (default: the space name)")
    p.add_argument("--storage-path", default=DEFAULT_STORAGE, help=(
        "run folders and checkpoints: a local folder (default ./sfkd_runs) or any URI Ray's storage accepts, "
        "e.g. s3://bucket/runs (endpoint and credentials from the usual AWS_* environment variables)"))
    p.add_argument("--name", help=(
        "run folder name: one folder name, created inside --storage-path, never one another search holds "
        "(default SPACE-YYYYmmdd-HHMMSS, with -2, -3, ... when a search of the same space took that second)"))
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (or search.x / scheduler.x / resources.x); repeatable")
    p.add_argument("--resume", action="store_true", help=(
        "continue the latest search of --space under --storage-path (or the one named by --name) after an "
        "interruption: finished trials are kept, unfinished ones continue from their last checkpoint, and "
        "MLflow records go on in the same parent run"))
    p.add_argument("--quiet", action="store_true", help="no per-trial lines, only the summary")
    return p


def confirm_flag(text: str) -> dict:
    """--confirm 3,3 -> {top: 3, seeds: 3}; the numbers are checked with the space (search.confirm)."""
    import argparse

    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected K,N (the K best configs, N seeds each), e.g. 3,3")
    return {"top": int(parts[0]), "seeds": int(parts[1])}


def cli_overrides(a) -> dict:
    """Flags are shorthands for --set keys, applied after them."""
    o = parse_sets(a.set)
    if a.num_samples is not None:
        o["search.num_samples"] = a.num_samples
    if a.epochs is not None:
        o["epochs"] = a.epochs
        o["scheduler.max_t"] = a.epochs
    if a.dataset is not None:
        o["dataset"] = a.dataset
    if a.data_dir is not None:
        o["data_dir"] = str(Path(a.data_dir).expanduser().resolve())
    if a.cpus_per_trial is not None:
        o["resources.cpu"] = a.cpus_per_trial
    if a.gpus_per_trial is not None:
        o["resources.gpu"] = a.gpus_per_trial
    if a.max_concurrent is not None:
        o["search.max_concurrent"] = a.max_concurrent
    if a.seeds is not None:
        o["study.seeds"] = a.seeds
    if a.confirm is not None:
        o["search.confirm"] = a.confirm
    if a.arms is not None:
        o["study.only"] = [name.strip() for name in a.arms.split(",")]
    return o


def prepare_storage(location: str) -> RunStorage:
    storage = RunStorage(location)
    storage.check_writable()
    return storage


def route_ray_logging(log_file: Path, loggers=("ray", "ray._private")) -> None:
    """Ray's own log lines (its token-authentication notice, Tune's "may be a performance bottleneck")
    go to search.log; errors also reach the console, so nothing that reports a failure is hidden. A
    logger with no handler would fall back to Python's last-resort stderr handler, which is how those
    lines reached the console before: ray.init(configure_logging=False) clears the "ray" logger's
    handlers, so they go on again after it, and on "ray._private" (left alone by ray.init) for what
    ray.init itself logs."""
    to_file = logging.FileHandler(log_file)
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers = [to_file, errors]
        logger.propagate = False


def user_code_files(space) -> list[str]:
    """The .py files of every module:FILE.py:FACTORY model the space names (fixed, searched or per arm):
    a cluster's workers receive them through Ray's runtime_env (py_modules), since no node shares the
    driver's disk."""
    from trainables.models.sources import user_code_file

    texts = json.dumps([space.config, space.params, space.arms], default=str)
    specs = {m for m in re.findall(r'"(module:[^"]+)"', texts)}
    return sorted({str(f) for f in map(user_code_file, specs) if f is not None and f.is_file()})


def init_ray(address: str | None, log_file: Path, py_modules: list[str] | None = None):
    import ray

    route_ray_logging(log_file)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        kw = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
        if py_modules:  # the user's model files, importable on every worker by their own names
            kw["runtime_env"] = {"py_modules": list(py_modules)}
        try:
            ray.init(address=address, **kw) if address else ray.init(include_dashboard=False, **kw)
        except ConnectionError as e:
            raise UsageError(f"--address {address}: cannot reach a Ray cluster there ({e})") from None
        except Exception as e:  # noqa: BLE001 - Ray's own start-up failed: not the user's input
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ServiceError(f"Ray could not start ({type(e).__name__}: {first})") from None
    route_ray_logging(log_file, ("ray",))
    return ray


def check_gpus(space, asked_on_cli: bool, ray) -> None:
    gpu = space.resources["gpu"]
    have = ray.cluster_resources().get("GPU", 0)
    if gpu > 0 and have == 0:
        if asked_on_cli:
            raise UsageError(f"--gpus-per-trial {gpu}: this Ray cluster has no GPU; leave it out to run on the CPU")
        print(f"warning: space {space.name} asks for {gpu} GPU per trial but Ray sees no GPU; running on the CPU",
              file=sys.stderr)
        space.resources["gpu"] = 0


def find_previous(storage: RunStorage, space_name: str, name: str | None) -> str:
    """The run folder name of the search to resume: --name, else the latest search of the space."""
    if name:
        check_run_name(name)
        if not storage.exists(f"{name}/search.json"):
            raise UsageError(f"--resume: {storage.uri(name)} is not a search folder (no search.json)")
    else:
        found = []
        for folder in storage.folders():
            try:
                if json.loads(storage.read_text(f"{folder}/search.json")).get("space") == space_name:
                    found.append(folder)
            except (OSError, ValueError):
                continue
        if not found:
            raise UsageError(f"--resume: no previous search of space {space_name!r} under {storage}")
        name = max(found, key=lambda f: storage.mtime(f"{f}/search.json"))
    if not storage.exists(f"{name}/tuner.pkl"):
        raise UsageError(f"--resume: {storage.uri(name)} holds no Ray Tune state (tuner.pkl); it cannot be resumed")
    return name


def subset_rounding(cfg, data) -> str:
    """A subset is drawn per class (stratified), each class's share rounded, so it can differ from the
    number asked for by a few images: the data line says so rather than leave 211 for 210 unexplained."""
    said = [f"{key} {asked} gives {len(x):,}" for key, asked, x in
            (("train_subset", cfg.train_subset, data.train_x), ("val_subset", cfg.val_subset, data.val_x))
            if asked is not None and asked != len(x)]
    return f" ({'; '.join(said)}: each class's share is rounded)" if said else ""


def preflight(space):
    """Data and teacher files are checked before anything is recorded or any trial starts, and the
    console says what data the search will train on. Returns the loaded splits (None when the data
    itself is searched over)."""
    import itertools

    from trainables.config import DistillConfig
    from trainables.data.splits import locate_data
    from trainables.inputs import SPLIT_KEYS, load_run_splits
    from trainables.stages import check_feature_config

    if "dataset" in space.params or "data_dir" in space.params:
        return None
    # Data keys given as grid values (shift: [null, 48]) are checked value by value; the trials then load
    # their own data, so nothing is returned to ship.
    gridded = [k for k in SPLIT_KEYS if k in space.params and next(iter(space.params[k])) == "grid"]
    variants = [dict(zip(gridded, combo)) for combo in itertools.product(*(space.params[k]["grid"] for k in gridded))]
    for variant in variants:
        cfg = DistillConfig.from_dict({**space.config, **variant})
        kind, root = locate_data(cfg.dataset, cfg.data_dir, cfg.download)
        data = load_run_splits(cfg)
        checked = data.normalised_as(cfg.mean, cfg.std)  # what the trials feed the models
        where = f" from {root}" if root else " (generated)"
        which = "".join(f", {k} {v}" for k, v in variant.items())
        print(f"data: {cfg.dataset}{where}{which}: {len(data.train_x):,} training / {len(data.val_x):,} validation / "
              f"{len(data.test_x):,} test images, {data.num_classes} classes, {data.image_size}x{data.image_size}"
              f"{subset_rounding(cfg, data)}", flush=True)
        for values in space.arm_configs().values():  # the taps of every arm's pair, at the data's real image size
            check_feature_config(DistillConfig.from_dict({**values, **variant}), data.num_classes, data.image_size)
        check_channel_targets(space, variant, data.num_classes, data.image_size)
    if cfg.student_weights:  # read and fitted once here, so a file that does not fit is one line now
        from trainables.models import create_model
        from trainables.sparsity.layers import layer_roles
        from trainables.teacher_file import load_student_weights

        student = create_model(cfg.student, data.num_classes)
        note = load_student_weights(student, cfg.student_weights, layer_roles(student, data.image_size)["classifier"],
                                    data.num_classes)
        if note:
            print(note, flush=True)
    if "teacher" in space.params or "teacher_arch" in space.params:
        return None if gridded else data
    checked_files = set()
    for values in space.arm_configs().values():  # every teacher file a trial will read, once
        arm = DistillConfig.from_dict({**values, **variants[-1]})
        if arm.teacher not in ("auto", "none") and (arm.teacher, arm.teacher_arch) not in checked_files:
            checked_files.add((arm.teacher, arm.teacher_arch))
            check_teacher_file(arm, data, checked)
    return None if gridded else data


CHANNEL_KEYS = ("student", "density", "sparsity", "sparsity_pattern", "channel_multiple")


def check_channel_targets(space, variant: dict, num_classes: int, image_size: int) -> None:
    """Every channel-pruned student reaches each density it is given (fixed, or a grid value) in the
    multiples of channels it is given, before anything is recorded: a target that channel_multiple rules
    out is one line and exit 2 here, not a failed trial. The widths depend on the architecture, the
    density and the multiple only (every group loses the same share), so the student's own fresh weights
    answer for the teacher's copy too. A density drawn from a distribution is checked by its trial."""
    import itertools

    from trainables.config import DistillConfig
    from trainables.models import create_model
    from trainables.sparsity.channels import prune_channels

    params = space.params
    if any(k in params and next(iter(params[k])) != "grid" for k in CHANNEL_KEYS):
        return
    grids = {k: params[k]["grid"] for k in CHANNEL_KEYS if k in params}
    done = set()
    for values in space.arm_configs().values():
        for combo in itertools.product(*grids.values()):
            cfg = DistillConfig.from_dict({**values, **variant, **dict(zip(grids, combo))})
            key = (cfg.student, cfg.density, cfg.channel_multiple)
            if cfg.channel and cfg.density < 1.0 and key not in done:
                done.add(key)
                prune_channels(create_model(cfg.student, num_classes), cfg.density, image_size,
                               multiple=cfg.channel_multiple)


def check_teacher_file(cfg, data, checked) -> None:
    """A teacher file loads strictly for its architecture and the data, and is worth distilling from: its
    top-1 on this search's validation split (measured here, whatever the file records; the test split
    decides nothing) is at least twice chance."""
    import torch

    from trainables.run import evaluate_model
    from trainables.teacher_file import TeacherError, check_never_saw_validation, check_worth_distilling, load_teacher

    teacher, info = load_teacher(Path(cfg.teacher).expanduser(), cfg.teacher_arch, data.num_classes,
                                 image_size=data.image_size)
    # First whether it saw these validation images at all: its accuracy on them would say nothing.
    warning = check_never_saw_validation(info, cfg.teacher, cfg.dataset, cfg.split_seed, cfg.val_fraction)
    if warning:
        print(warning, file=sys.stderr)
    if len(checked.val_x):
        measured = evaluate_model(teacher, checked.val_x, checked.val_y, checked.mean, checked.std,
                                  torch.device("cpu"))["acc"]
        said = "the training images' own" if cfg.mean is None and cfg.std is None else "the config's"
        print(f"teacher {Path(cfg.teacher).name}: validation top-1 {measured:.2f}% ({cfg.teacher_arch}, inputs "
              f"normalised with {said} mean/std)", flush=True)
        try:
            check_worth_distilling(measured, Path(cfg.teacher).name, data.num_classes)
        except TeacherError as e:
            if cfg.mean is not None or cfg.std is not None or info.get("test_acc") is not None:
                raise
            raise TeacherError(f"{e}; if it was trained with normalisation of its own (ImageNet's, for example), "
                               f"give it as mean and std (--set mean=[...] --set std=[...])") from None


def main(argv=None) -> int:
    quiet_libraries()
    a = build_parser().parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    if a.resume:
        storage = RunStorage(a.storage_path)
        if not storage.exists(""):
            raise UsageError(f"--resume: storage path {storage} does not exist")
        name = find_previous(storage, Path(a.space).stem, a.name)
        state = read_run_state(storage.read_text(f"{name}/search.json"), storage.uri(name, "search.json"),
                               ("space_file", "parent_run_id", "tracking_uri", "experiment", "argv"))
        if not isinstance(state["argv"], list):
            raise UsageError(f"{storage.uri(name, 'search.json')}: argv is not a list: not a complete record of a run")
        # The resumed search is the one that was started: same space file and the same overrides.
        first = build_parser().parse_args(state["argv"])
        space = parse_space(state["space_file"], cli_overrides(first))
        resolve_registered_teacher(space.config, normalise_uri(state["tracking_uri"]))
        first.tracking_uri, first.quiet = a.tracking_uri, a.quiet
        ray = init_ray(a.address, storage.local(name) / "search.log", user_code_files(space))
        check_gpus(space, False, ray)
        from tuner.driver import run_search

        return run_search(space, storage, name, first, state["argv"], resume=state)
    if a.name is not None:
        check_run_name(a.name)
    check_share_flags(a)
    space = parse_space(a.space, cli_overrides(a))
    from tuner.driver import check_buildable

    check_buildable(space)  # Ray's search space, the searcher and the scheduler, built before any record
    for line in space.warnings:
        print(line, file=sys.stderr)
    check_tracking_store(normalise_uri(a.tracking_uri))  # before Ray starts or anything is written
    said = resolve_registered_teacher(space.config, normalise_uri(a.tracking_uri))  # teacher: models:/NAME/VERSION
    if said:
        print(said, flush=True)
    data = preflight(space)
    storage = prepare_storage(a.storage_path)
    run_dir, name = claim_run_folder(storage, a.name, space.name)
    try:
        ray = init_ray(a.address, run_dir / "search.log", user_code_files(space))
        check_gpus(space, a.gpus_per_trial is not None, ray)
    except BaseException:
        storage.release(run_dir)  # nothing ran: leave no run folder behind (it was ours)
        raise

    from tuner.driver import run_search

    try:
        return run_search(space, storage, name, a, argv, data=data)
    except BaseException:
        if not storage.exists(f"{name}/search.json"):  # stopped before anything was recorded: no folder left
            storage.release(run_dir)
        raise


def check_share_flags(a) -> None:
    """The resource flags name themselves when they are no number of CPUs or share of a GPU."""
    if a.gpus_per_trial is not None and not (math.isfinite(a.gpus_per_trial) and a.gpus_per_trial >= 0):
        raise UsageError(f"--gpus-per-trial {a.gpus_per_trial}: expected a finite number >= 0 (a share such as 0.25, "
                         f"or whole GPUs)")
    if a.cpus_per_trial is not None and not (math.isfinite(a.cpus_per_trial) and a.cpus_per_trial > 0):
        raise UsageError(f"--cpus-per-trial {a.cpus_per_trial}: expected a finite number > 0")


def claim_run_folder(storage: RunStorage, name: str | None, space_name: str) -> tuple[Path, str]:
    """This search's own run folder, claimed atomically. A name given with --name that is taken is an
    error; the default name (space and start time) takes the next free suffix, so two searches started
    in the same second get two folders."""
    if name:
        return storage.claim(name), name
    base = f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 100):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            return storage.claim(candidate), candidate
        except UsageError:
            continue
    raise UsageError(f"--storage-path {storage}: no free run name {base}-N; give one with --name")


if __name__ == "__main__":
    sys.exit(run_cli(main))
