"""MLflow as a team runs it: a real `mlflow server` over PostgreSQL with its artifacts in an S3-compatible
store, every command pointed at it by MLFLOW_TRACKING_URI alone."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from test_browser import _close_assistant, _page_text, _shoot, _wait, chromium  # noqa: F401 - the browser fixture
from test_cluster_storage import BUCKET, _keys, s3  # noqa: F401 - the S3 server fixture
from test_scale_out import free_port

from tuner.tracking import PARENT_TAG

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = pytest.mark.skipif(not PG_BIN and not os.environ.get("CI"), reason="needs Debian's postgresql")


@pytest.fixture
def postgres():
    """A PostgreSQL cluster of its own in a temp folder, on 127.0.0.1, run by the postgres user."""
    folder = Path(tempfile.mkdtemp(prefix="sfkd-pg-", dir="/tmp"))
    shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    bin_dir = Path(PG_BIN[-1])

    def as_postgres(*cmd, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, timeout=120, **kw)

    r = as_postgres(str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres")
    assert r.returncode == 0, r.stderr
    r = as_postgres(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "start",
                    "-o", f"-p {port} -k {folder} -h 127.0.0.1")
    assert r.returncode == 0, r.stderr + (folder / "log").read_text()
    r = as_postgres(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "mlflow")
    assert r.returncode == 0, r.stderr
    yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    as_postgres(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def team_server(postgres, s3, tmp_path):  # noqa: F811 - the fixture imported above
    """`mlflow server` with --backend-store-uri postgresql://... and --artifacts-destination s3://..."""
    _, env = s3
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", postgres, "--artifacts-destination", f"s3://{BUCKET}/mlartifacts",
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        raise AssertionError("mlflow server did not start: " + (tmp_path / "mlflow-server.log").read_text()[-2000:])
    yield uri, env
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.mark.slow
def test_search_export_final_and_report_run_against_a_postgres_and_s3_mlflow_server_named_only_by_the_environment(
        team_server, s3, chromium, tmp_path):  # noqa: F811 - the fixture imported above
    uri, _ = team_server
    # Only MLFLOW_TRACKING_URI says where runs go: no --tracking-uri anywhere below.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(MLFLOW_TRACKING_URI=uri)
    work = tmp_path / "work"
    work.mkdir()
    long_dir = work / ("c" * 200) / ("a" * 200) / ("e" * 150)  # a config value MLflow's params cut at 500
    assert len(str(long_dir)) > 500

    def run(*args, timeout=900):
        r = subprocess.run([sys.executable, "-m", *args], cwd=work, capture_output=True, text=True, timeout=timeout,
                           env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r

    run("tuner.search", "--space", "smoke", "--storage-path", str(work / "runs"), "--name", "team",
        "--set", f"cache_dir={long_dir}", "--quiet")
    assert not (work / "mlflow.db").exists()  # the environment's server, not the embedded default
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("sfkd.kind") == "search"]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 8
    assert parent.data.tags["mlflow.note.content"].startswith("The offline demo (make demo)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                            text=True).stdout.strip()
    for c in [parent, *children]:
        assert c.data.tags["mlflow.user"] and c.data.tags["mlflow.source.name"].endswith("search.py")
        assert not commit or c.data.tags["mlflow.source.git.commit"] == commit
    with_ckpt = [c for c in children if client.list_artifacts(c.info.run_id, "checkpoint")]
    assert len(with_ckpt) == 2
    assert any(f.path == "report/report.html" for f in client.list_artifacts(parent.info.run_id, "report"))
    # The artifacts really live in the S3 store behind the server.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert any(k.endswith("/checkpoint/student.sfkd") for k in _keys(s3[0], "mlartifacts/"))

    run("tuner.export", "--experiment", "smoke", "--out", str(work / "best.yaml"))
    best = yaml.safe_load((work / "best.yaml").read_text())
    chosen = next(c for c in children if c.data.tags["sfkd.trial_id"] == parent.data.tags["sfkd.best_trial"])
    full = json.loads(Path(client.download_artifacts(chosen.info.run_id, "config.json", str(tmp_path))).read_text())
    assert best == full and best["cache_dir"] == str(long_dir)
    assert len(chosen.data.params["cache_dir"]) == 500  # what the params alone would have given

    run("tuner.final", "--config", str(work / "best.yaml"), "--set", "epochs=1", "--out", str(work / "final"))
    run("tuner.report", "--experiment", "smoke", "--out", str(work / "report"), "--no-log")
    assert (work / "report" / "report.html").stat().st_size > 10_000

    # The registered version loads by name through pyfunc and predicts the checkpoint's logits.
    import mlflow

    from trainables.models import create_model
    from trainables.sparsity import load_sparse

    (version,) = client.search_model_versions("name = 'sfkd-resnet8-synthetic'")
    assert {"density", "nonzero_params", "test_acc_last"} <= set(version.tags)
    mlflow.set_tracking_uri(uri)  # the server proxies the S3 artifacts: this process needs no S3 credentials
    model = mlflow.pyfunc.load_model(f"models:/sfkd-resnet8-synthetic/{version.version}")
    state, _, _ = load_sparse(work / "final" / "student.sfkd")
    student = create_model("resnet8", 10).eval()
    student.load_state_dict(state)
    batch = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = student(batch).numpy()
    assert float(abs(model.predict(batch.numpy()) - expected).max()) <= 1e-5

    # The UI of this server: the experiment opens on the training runs, with Source and Models filled.
    from selenium.webdriver.common.by import By

    (final_run,) = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'final'")
    d = chromium
    d.get(f"{uri}/#/experiments/{exp.experiment_id}/runs")
    _wait(d, lambda: final_run.info.run_name in _page_text(d), "the final run")
    _close_assistant(d)
    # MLflow's sidebar remembers per browser whether it shows GenAI or model-training pages; a fresh
    # browser starts on GenAI, so switch it as a user would once.
    for toggle in d.find_elements(By.XPATH, "//*[normalize-space(text())='Model training']"):
        toggle.click()
        break
    _wait(d, lambda: "Model registry" in _page_text(d) and "Judges" not in _page_text(d), "the model-training view")

    def row(run) -> str:
        """A run's whole row: the grid draws its pinned name cells and its other cells as two rows."""
        return " ".join(e.text for e in d.find_elements(By.XPATH, f"//*[@role='row' and @row-id='{run.info.run_id}']"))

    _wait(d, lambda: "final.py" in row(final_run) and "sfkd-resnet8-synthetic" in row(final_run),
          "the final run's Source and Models cells")
    head = d.find_element(By.XPATH, f"//a[contains(@href, '{parent.info.run_id}')]/ancestor::*[@role='gridcell'][1]")
    head.find_element(By.TAG_NAME, "button").click()  # the search's trials, expanded under it
    _wait(d, lambda: all("search.py" in row(r) for r in [parent, *children]), "search.py as every trial's source")
    assert {"Source", "Models"} <= set(_page_text(d).splitlines())
    _shoot(d, tmp_path / "mlflow-runs.png")
    assert (tmp_path / "mlflow-runs.png").read_bytes()[:4] == b"\x89PNG"
