import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# The node-local caches (unpacked archives, decoded images, teacher outputs) of one test session, so
# no test finds another session's warm cache. Set before Ray starts: its workers inherit it.
# Removed when the session ends (pytest_unconfigure): a session's teacher outputs reach a gigabyte, and a
# machine that runs the suite often would fill its disk with them.
_SESSION_CACHE = None
if "SFKD_CACHE" not in os.environ:
    _SESSION_CACHE = os.environ["SFKD_CACHE"] = tempfile.mkdtemp(prefix="sfkd-test-cache-")


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _tracking_uri_does_not_leak():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ (MLflow 3), so a test that
    calls it, or our code that does (the final run's model logging), would send every later subprocess
    to that test's mlflow.db, a folder pytest has removed by then. Each test ends with the variable it
    started with."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets the variable


def _cifar_source() -> Path | None:
    for var in ("SFKD_CIFAR10_DIR", "SFKD_CIFAR10_ARCHIVE"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return DEFAULT_ARCHIVE if DEFAULT_ARCHIVE.exists() else None


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """The unpacked shared CIFAR-10 JPEG tree; skips (or fails in CI) when the archive is absent."""
    src = _cifar_source()
    if src is None or not src.exists():
        msg = f"shared CIFAR-10 JPEGs not found (set SFKD_CIFAR10_ARCHIVE or put them at {DEFAULT_ARCHIVE})"
        if os.environ.get("SFKD_REQUIRE_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    from trainables.data.splits import _resolve_tree

    return _resolve_tree(src.resolve())


@pytest.fixture(scope="session")
def tiny_teacher_file(tmp_path_factory) -> Path:
    """An untrained resnet8 saved as a teacher file for the 10-class synthetic data."""
    from trainables.models import create_model
    from trainables.teacher_file import save_teacher

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    save_teacher(path, create_model("resnet8", 10), "resnet8", "synthetic", 10, test_acc=0.0)
    return path


@pytest.fixture(scope="session")
def trained_teacher_file(tmp_path_factory) -> Path:
    """resnet8 trained 3 epochs on the training split of the synthetic data (about 80% test top-1), for
    searches whose own small budget would give an auto teacher too weak to distil from."""
    from tuner.teacher_training import teacher_config, train_teacher

    path = tmp_path_factory.mktemp("trained_teacher") / "resnet8-synthetic.pt"
    train_teacher(teacher_config("resnet8", "synthetic", 3, synthetic_size=1200), path, progress=False)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray instance of the test session. It declares 1 GPU, which no test machine
    really has, so fractional-GPU scheduling can be exercised while trials run on the CPU."""
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_search(ray_session, tmp_path_factory):
    """One real `smoke` search (real Ray, sqlite MLflow, synthetic data), shared by the tests that
    read what a search records: the end-to-end test and the browser test."""
    from types import SimpleNamespace

    from tuner import search

    root = tmp_path_factory.mktemp("smoke_search")
    uri = f"sqlite:///{root}/mlflow.db"
    rc = search.main(["--space", "smoke", "--storage-path", str(root / "runs"), "--tracking-uri", uri,
                      "--name", "e2e", "--experiment", "smoke-e2e", "--quiet"])
    return SimpleNamespace(rc=rc, root=root, uri=uri, run_dir=root / "runs" / "e2e", experiment="smoke-e2e")
