"""A real MLflow server that goes away mid-search, and a real two-node Ray cluster on loopback."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuner.tracking import PARENT_TAG, PENDING_FILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    log = open(folder / f"mlflow-server-{time.time():.0f}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder}/server.db",
                             "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError("mlflow server did not start")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


@pytest.mark.slow
def test_search_survives_an_mlflow_server_outage_and_loses_nothing(ray_session, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    search = None
    try:
        search = subprocess.Popen(
            [sys.executable, "-m", "tuner.search", "--space", "smoke", "--tracking-uri", uri, "--address",
             ray_session.get_runtime_context().gcs_address, "--storage-path", str(tmp_path / "runs"), "--name", "outage",
             "--num-samples", "4", "--epochs", "3", "--set", "scheduler.type=fifo", "--set", "synthetic_size=600",
             "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(uri)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait for the first logged epoch, then pull the plug
            time.sleep(1)
            exp = client.get_experiment_by_name("smoke")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if any("val_acc" in r.data.metrics for r in runs):
                break
        stop(server)
        time.sleep(15)  # trials keep training; their writes queue up
        server = start_mlflow_server(tmp_path, port)
        out, _ = search.communicate(timeout=600)
        assert search.returncode == 0, out
        if (tmp_path / "runs" / "outage" / PENDING_FILE).exists():  # the search ended during the outage
            r = subprocess.run([sys.executable, "-m", "tuner.sync", "--run-dir", str(tmp_path / "runs" / "outage")],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
        assert not (tmp_path / "runs" / "outage" / PENDING_FILE).exists()

        exp = client.get_experiment_by_name("smoke")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("sfkd.kind") == "search"]
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
        # What an uninterrupted FIFO run of 4 trials x 3 epochs records: 4 children, every metric at
        # steps 1, 2, 3, all finished, and the parent's best figures and best-config artifact.
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert "best_val_acc" in parents[0].data.metrics
        assert len(children) == 4
        keys = None
        for c in children:
            assert c.data.tags["sfkd.status"] == "completed" and c.info.status == "FINISHED"
            assert keys is None or set(c.data.metrics) == keys
            keys = set(c.data.metrics)
            for key in ("val_acc", "loss", "lr", "density", "img_per_s"):
                assert [m.step for m in client.get_metric_history(c.info.run_id, key)] == [1, 2, 3], key
        artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id)]
        assert "best_config.yaml" in artifacts
        with_ckpt = [c for c in children if client.list_artifacts(c.info.run_id, "checkpoint")]
        assert len(with_ckpt) == 2  # keep_checkpoints
    finally:
        if search and search.poll() is None:
            search.kill()
        stop(server)


def _kill_cluster(temp_dir: str, port: int) -> None:
    """Stop only this test's Ray nodes (`ray stop` would also stop the session's Ray instance)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline or f":{port}" in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.slow
def test_search_on_a_two_node_ray_cluster_runs_trials_on_both_nodes(tmp_path, trained_teacher_file):
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    # Token auth on every node and the driver, said outright: a node started without it cannot join a
    # head that has it (Ray turns it on when ~/.ray/auth_token exists).
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    try:
        subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                        "--temp-dir", temp_dir, *common], check=True, capture_output=True, timeout=180, env=env)
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", *common], check=True,
                       capture_output=True, timeout=180, env=env)
        r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", "smoke", "--address", f"127.0.0.1:{port}",
                            "--storage-path", str(tmp_path / "runs"), "--name", "cluster", "--tracking-uri",
                            f"sqlite:///{tmp_path}/mlflow.db", "--num-samples", "4", "--max-concurrent", "2",
                            "--cpus-per-trial", "1", "--epochs", "2", "--set", "scheduler.type=fifo",
                            "--set", "synthetic_size=400", "--set", f"teacher={trained_teacher_file}", "--quiet"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        nodes = set()
        for f in (tmp_path / "runs" / "cluster").glob("*/result.json"):
            for line in f.read_text().splitlines():
                nodes.add(json.loads(line)["node_id"])
        assert len(nodes) == 2, nodes  # Ray's own record of where each trial's epochs ran
    finally:
        _kill_cluster(temp_dir, port)


class BlackHole:
    """A loopback port that accepts connections and never answers, until closed."""

    def __init__(self, port: int):
        import threading

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 60
        while True:  # the server that held the port may take a moment to let it go
            try:
                self.sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.sock.listen(64)
        self.held, self.accepted = [], 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted += 1

    def close(self):
        self.sock.close()
        for conn in self.held:  # a request waiting on the hole fails now, and its sender tries again
            conn.close()


def _result_rows(run_dir: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in run_dir.glob("*/result.json"))


@pytest.mark.slow
def test_trials_keep_training_while_the_tracking_server_black_holes_and_every_metric_arrives_once(
        ray_session, tmp_path, trained_teacher_file):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    hole = search = None
    epochs = 10
    try:
        # A write that reaches the hole waits an hour: if any MLflow call ran on Tune's controller
        # thread, no result could arrive while the hole holds it.
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_TIMEOUT": "3600"}
        search = subprocess.Popen(
            [sys.executable, "-m", "tuner.search", "--space", "smoke", "--tracking-uri", uri, "--address",
             ray_session.get_runtime_context().gcs_address, "--storage-path", str(tmp_path / "runs"), "--name", "hole",
             "--num-samples", "4", "--epochs", str(epochs), "--set", "scheduler.type=fifo", "--set", "synthetic_size=600",
             "--set", f"teacher={trained_teacher_file}", "--quiet"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        client = MlflowClient(uri)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the first logged epoch, then the server turns into a hole
            time.sleep(0.5)
            exp = client.get_experiment_by_name("smoke")
            if exp and any("val_acc" in r.data.metrics for r in client.search_runs([exp.experiment_id])):
                break
        stop(server)
        hole = BlackHole(port)
        run_dir = tmp_path / "runs" / "hole"
        # MLflow's own retries back off for a few seconds after the refused connection; from the moment
        # the writer's request sits in the hole, count the results that still arrive.
        deadline = time.monotonic() + 120
        while hole.accepted < 1 and search.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert hole.accepted >= 1, "the writer never reached the black hole"
        before = _result_rows(run_dir)
        deadline = time.monotonic() + 300
        while _result_rows(run_dir) < before + 4 and search.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        during = _result_rows(run_dir) - before
        assert during >= 4, f"only {during} results arrived while the server black-holed"
        hole.close()
        hole = None
        server = start_mlflow_server(tmp_path, port)
        out, _ = search.communicate(timeout=600)
        assert search.returncode == 0, out
        if (run_dir / PENDING_FILE).exists():
            r = subprocess.run([sys.executable, "-m", "tuner.sync", "--run-dir", str(run_dir)],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
        exp = client.get_experiment_by_name("smoke")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("sfkd.kind") == "search"]
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
        assert len(parents) == 1 and len(children) == 4
        for c in children:
            assert c.data.tags["sfkd.status"] == "completed"
            for key in ("val_acc", "loss", "lr"):
                assert [m.step for m in client.get_metric_history(c.info.run_id, key)] == list(range(1, epochs + 1))
    finally:
        if hole is not None:
            hole.close()
        if search and search.poll() is None:
            search.kill()
        stop(server)
