"""A teacher named by a model this tool registered in MLflow (`teacher: models:/NAME/VERSION`): the
version's sparse checkpoint, read back and written as a teacher file once per machine, which every
command then reads like any other (docs/models.md, Weights)."""
import json
import os
import tempfile
from pathlib import Path

from tuner.errors import UsageError

PREFIX = "models:/"


def is_registered(teacher) -> bool:
    return isinstance(teacher, str) and teacher.startswith(PREFIX)


def cache_root() -> Path:
    base = os.environ.get("SFKD_CACHE") or Path.home() / ".cache" / "sfkd-data"
    return Path(base) / "registered-teachers"


def resolve_registered_teacher(values: dict, tracking_uri: str) -> str | None:
    """Replace `teacher: models:/NAME/VERSION` in `values` by the path of a teacher file holding that
    version's student (dense, its pruned weights zero), and `teacher_arch` by that student's architecture
    (the registered model decides it; the line printed names it). Returns that line, or None when the
    teacher is no registered model. Nothing is unpickled: the checkpoint is the project's sparse format."""
    source = values.get("teacher")
    if not is_registered(source):
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    from trainables.models.sources import file_slug
    from trainables.sparsity import load_sparse
    from trainables.teacher_file import save_teacher

    parts = source[len(PREFIX):].strip("/").split("/")
    if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
        raise UsageError(f"teacher {source}: expected models:/NAME/VERSION (a version number)")
    name, version = parts
    target = cache_root() / f"{file_slug(name)}-v{version}.pt"
    client = mlflow.MlflowClient(tracking_uri)
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise UsageError(f"teacher {source}: the tracking store {tracking_uri} has no such model version "
                         f"({str(e).splitlines()[0][:200]})") from None
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{PREFIX}{name}/{version}", dst_path=tmp,
                                                                  tracking_uri=tracking_uri))
            except MlflowException as e:
                raise UsageError(f"teacher {source}: its files cannot be read ({str(e).splitlines()[0][:200]})") from None
            checkpoints = sorted(folder.rglob("*.sfkd"))
            preprocessing = sorted(folder.rglob("preprocessing.json"))
            if not checkpoints or not preprocessing:
                raise UsageError(f"teacher {source} is not a model this tool registered (no sparse checkpoint and "
                                 f"preprocessing.json in it)")
            state, _, meta = load_sparse(checkpoints[0])
            pre = json.loads(preprocessing[0].read_text())
            target.parent.mkdir(parents=True, exist_ok=True)
            # The version's test top-1 (the final run's last epoch, never selected on test) is the teacher's
            # recorded accuracy; the search checks it against chance like any teacher file's.
            save_teacher(target, _module_with(state), meta["config"]["student"], meta["config"].get("dataset", ""),
                         len(pre["classes"]), float(mv.tags["test_acc_last"]), image_size=pre.get("image_size"),
                         registered_model=source, run_id=mv.run_id)
    from trainables.teacher_file import read_teacher_file

    arch = read_teacher_file(target)["arch"]
    values["teacher"], values["teacher_arch"] = str(target), arch
    return f"teacher {source}: the {arch} of run {mv.run_id}, read into {target}"


def _module_with(state: dict):
    """save_teacher takes a module; a holder whose state_dict is the checkpoint's."""
    class Holder:
        def state_dict(self):
            return state
    return Holder()
