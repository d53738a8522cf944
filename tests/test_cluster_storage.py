"""A cluster with no shared disk: runs in an S3-compatible store on 127.0.0.1, a Ray head and a worker
node whose mount namespace hides every file of the driver's, a driver killed mid-search and resumed
from the URI, and a worker node killed mid-trial."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_scale_out import _kill_cluster, free_port

from tuner.tracking import PARENT_TAG

BUCKET = "sfkd"
BIN = Path(sys.executable).parent
EPOCHS = 10  # long enough that a trial is still running well after its second checkpoint
pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")


def _wait(condition, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def s3(tmp_path):
    """moto's standalone S3 server on loopback, with one bucket, and the AWS_* variables that point
    boto3, pyarrow (so Ray) and the tool at it."""
    import boto3

    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")

    def up():
        try:
            client.list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    _wait(up, 60, "the S3 server")
    client.create_bucket(Bucket=BUCKET)
    yield client, env
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _keys(client, prefix: str) -> list[str]:
    out, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _results(client, run: str) -> dict[str, list[dict]]:
    """Ray's result.json of every trial of a run, read from the store: trial folder -> rows."""
    out = {}
    for key in _keys(client, f"runs/{run}/"):
        if key.endswith("/result.json"):
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            out[key.split("/")[-2]] = [json.loads(x) for x in body.splitlines() if x.strip()]
    return out


class Cluster:
    """A Ray head (this mount namespace) and a worker node in a namespace of its own with tmpfs over
    `hidden`: the driver's working folder, the teacher's folder and the test session's caches."""

    def __init__(self, env: dict, hidden: list[Path]):
        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths live under it
        # Token auth on every node and the driver, said outright: a node started without it cannot join
        # a head that has it (Ray turns it on when ~/.ray/auth_token exists).
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "token"}
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        subprocess.run([str(BIN / "ray"), "start", "--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--temp-dir", self.temp_dir, *common], check=True, capture_output=True, timeout=180, env=self.env)
        mounts = " && ".join(f"mount -t tmpfs tmpfs {p}" for p in hidden)
        start = " ".join([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{self.port}", *common])
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && {start}"],
                           capture_output=True, text=True, timeout=180, env=self.env)
        assert r.returncode == 0, r.stderr[-2000:]
        self.address = f"127.0.0.1:{self.port}"

    def worker_raylets(self) -> list[int]:
        """The raylet of the worker node: the one in another mount namespace than this process."""
        mine = os.readlink("/proc/self/ns/mnt")
        out = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and b"raylet" in (proc / "cmdline").read_bytes().split(b"\0")[0] \
                        and f":{self.port}".encode() in (proc / "cmdline").read_bytes() \
                        and os.readlink(proc / "ns" / "mnt") != mine:
                    out.append(int(proc.name))
            except OSError:
                continue
        return out

    def stop(self):
        _kill_cluster(self.temp_dir, self.port)


def _search(cluster, tmp_path, env, teacher, name, *extra):
    cmd = [sys.executable, "-m", "tuner.search", "--space", "smoke", "--address", cluster.address,
           "--storage-path", f"s3://{BUCKET}/runs", "--name", name, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
           "--num-samples", "4", "--max-concurrent", "2", "--cpus-per-trial", "1", "--epochs", str(EPOCHS),
           "--set", "scheduler.type=fifo", "--set", "synthetic_size=1000", "--set", f"teacher={teacher}", "--quiet",
           # Until Ray has noticed a node is gone it may place a trial there again; each try counts.
           "--set", "search.max_failures=5", *extra]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cluster.env, start_new_session=True)


def _children(client: MlflowClient, run: str):
    exp = client.get_experiment_by_name("smoke")
    if exp is None:
        return None, []
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sfkd.kind") == "search" and r.data.params.get("storage", "").endswith(run)]
    if not parents:
        return None, []
    return parents[0], [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]


def _assert_every_epoch_once(client, children):
    assert len(children) == 4
    for c in children:
        assert c.data.tags["sfkd.status"] == "completed" and c.info.status == "FINISHED", c.data.tags.get("sfkd.reason")
        for key in ("val_acc", "loss", "density"):
            assert [m.step for m in client.get_metric_history(c.info.run_id, key)] == list(range(1, EPOCHS + 1)), key
        # Data and teacher came through Ray's object store: the worker node could not read either file.
        assert c.data.metrics["data_shipped"] == 1 and c.data.metrics["teacher_shipped"] == 1


@pytest.mark.parametrize("where", ["a missing bucket", "a closed port"])
def test_a_storage_uri_that_cannot_be_written_is_one_line_and_exit_2_before_anything_is_recorded(s3, tmp_path, where):
    _, env = s3
    if where == "a closed port":
        env = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    uri = "s3://no-such-bucket/runs" if where == "a missing bucket" else f"s3://{BUCKET}/runs"
    r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", "smoke", "--storage-path", uri],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: --storage-path {uri} is not writable (") and "Traceback" not in r.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sfkd_runs").exists()


@pytest.mark.slow
def test_search_with_runs_in_s3_on_two_nodes_that_share_no_disk_survives_a_killed_driver_and_a_killed_node(
        s3, tmp_path, trained_teacher_file):
    client, env = s3
    work = tmp_path / "work"
    work.mkdir()
    teacher = work / "teacher.pt"  # in the driver's working folder, hidden from the worker
    shutil.copy(trained_teacher_file, teacher)
    cluster = Cluster(env, [work, Path(os.environ["SFKD_CACHE"])])
    tracking = MlflowClient(f"sqlite:///{work}/mlflow.db")
    try:
        # 1. The driver dies (SIGKILL) once a first epoch is recorded; --resume from the URI finishes it.
        search = _search(cluster, work, env, teacher, "s3")
        _wait(lambda: any("val_acc" in c.data.metrics for c in _children(tracking, "s3")[1]) or search.poll() is not None,
              300, "a first epoch in MLflow")
        assert search.poll() is None, search.communicate()[0]
        os.killpg(search.pid, signal.SIGKILL)
        search.wait(30)
        resumed = subprocess.run([sys.executable, "-m", "tuner.search", "--space", "smoke", "--resume", "--name", "s3",
                                  "--storage-path", f"s3://{BUCKET}/runs", "--address", cluster.address, "--quiet"],
                                 cwd=work, capture_output=True, text=True, timeout=600, env=cluster.env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        parent, children = _children(tracking, "s3")
        assert parent.info.status == "FINISHED" and parent.data.params["storage"] == f"s3://{BUCKET}/runs/s3"
        _assert_every_epoch_once(tracking, children)
        # Trials ran on both nodes (Ray's own record, read from the store).
        results = _results(client, "s3")
        assert len(results) == 4
        assert len({row["node_id"] for rows in results.values() for row in rows}) == 2
        # The run's own files are in the store, and the best config names a checkpoint there whose bytes
        # are the ones MLflow holds for the best trial.
        stored_files = set(_keys(client, "runs/s3/"))
        assert {f"runs/s3/{f}" for f in ("search.json", "best_config.yaml", "report/report.html")} <= stored_files
        best = client.get_object(Bucket=BUCKET, Key="runs/s3/best_config.yaml")["Body"].read().decode()
        header = dict(line[len("# sfkd."):].split(": ", 1) for line in best.splitlines() if line.startswith("# sfkd."))
        assert header["checkpoint"].startswith(f"s3://{BUCKET}/runs/s3/")
        stored = client.get_object(Bucket=BUCKET, Key=header["checkpoint"][len(f"s3://{BUCKET}/"):])["Body"].read()
        chosen = next(c for c in children if c.data.tags["sfkd.trial_id"] == header["trial_id"])
        logged = Path(tracking.download_artifacts(chosen.info.run_id, "checkpoint/student.sfkd", str(tmp_path)))
        assert logged.read_bytes() == stored
        # tuner.export, from MLflow alone, gives the same config the search wrote to the store.
        exported = subprocess.run([sys.executable, "-m", "tuner.export", "--run", parent.info.run_id, "--tracking-uri",
                                   f"sqlite:///{work}/mlflow.db", "--out", str(tmp_path / "best.yaml")],
                                  cwd=work, capture_output=True, text=True, timeout=120)
        assert exported.returncode == 0, exported.stderr
        assert yaml.safe_load((tmp_path / "best.yaml").read_text()) == yaml.safe_load(best)
        assert not (work / "sfkd_runs").exists() and not (work / "s3:").exists()  # nothing went to a local folder

        # 2. The worker node dies (SIGKILL its raylet) while both running trials hold a second checkpoint.
        search = _search(cluster, work, env, teacher, "node")

        def both_running_have_two_checkpoints():
            if search.poll() is not None:
                return True
            _, kids = _children(tracking, "node")
            running = [c.data.tags["sfkd.trial_id"] for c in kids if "sfkd.status" not in c.data.tags]
            with_two = {m[1] for k in _keys(client, "runs/node/")
                        if (m := re.match(r"runs/node/([^/]+)/checkpoint_(\d+)/", k)) and int(m[2]) >= 1}
            return len(running) == 2 and all(any(t in folder for folder in with_two) for t in running)

        _wait(both_running_have_two_checkpoints, 300, "two running trials with two checkpoints each")
        assert search.poll() is None, search.communicate()[0]
        raylets = cluster.worker_raylets()
        assert len(raylets) == 1
        os.kill(raylets[0], signal.SIGKILL)
        out, _ = search.communicate(timeout=600)
        assert search.returncode == 0, out
        _, children = _children(tracking, "node")
        _assert_every_epoch_once(tracking, children)
        results = _results(client, "node")
        moved = {t: rows for t, rows in results.items() if len({r["node_id"] for r in rows}) == 2}
        assert moved, "no trial was running on the killed node"
        for rows in moved.values():  # it went on from its last checkpoint in the store, not from epoch 1
            first = rows[0]["node_id"]
            after = [r["epoch"] for r in rows if r["node_id"] != first]
            assert after and min(after) >= 2 and max(after) == EPOCHS
    finally:
        cluster.stop()


USER_MODEL = '''
import torch.nn as nn


def build(num_classes):
    """A student of the user's own: three convolutions, an 8x8 map at 32 px, then a classifier."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, num_classes))
'''


@pytest.mark.slow
def test_a_student_from_the_users_own_file_trains_on_both_nodes_though_the_worker_cannot_see_the_file(
        s3, tmp_path, trained_teacher_file):
    """The driver ships the user's .py file with Ray's runtime_env (py_modules): the worker node, whose
    namespace hides the driver's folder, imports it by its own name."""
    client, env = s3
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_student.py").write_text(USER_MODEL)
    teacher = work / "teacher.pt"
    shutil.copy(trained_teacher_file, teacher)
    cluster = Cluster(env, [work, Path(os.environ["SFKD_CACHE"])])
    tracking = MlflowClient(f"sqlite:///{work}/mlflow.db")
    try:
        r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", "smoke", "--address", cluster.address,
                            "--storage-path", f"s3://{BUCKET}/runs", "--name", "mine", "--tracking-uri",
                            f"sqlite:///{work}/mlflow.db", "--num-samples", "2", "--max-concurrent", "2",
                            "--cpus-per-trial", "1", "--epochs", "3", "--set", "scheduler.type=fifo", "--set",
                            "synthetic_size=600", "--set", f"teacher={teacher}", "--set",
                            "student=module:my_student.py:build", "--quiet"],
                           cwd=work, capture_output=True, text=True, timeout=600, env=cluster.env)
        assert r.returncode == 0, r.stdout + r.stderr
        parent, children = _children(tracking, "mine")
        assert parent.info.status == "FINISHED" and len(children) == 2
        for c in children:
            assert c.data.tags["sfkd.status"] == "completed", c.data.tags.get("sfkd.reason")
            assert c.data.params["student"] == f"module:{work / 'my_student.py'}:build"  # made absolute by the driver
            assert c.data.params["taps_student"] == "5"  # -1: the last spatial map, the third conv's ReLU
        results = _results(client, "mine")
        assert len({row["node_id"] for rows in results.values() for row in rows}) == 2  # both nodes trained
    finally:
        cluster.stop()
