"""A write retried after a timeout makes no second run and no second metric: a real `mlflow server`
behind a loopback proxy that delivers a request, then holds the server's answer past the client's
timeout and drops it."""
import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from test_scale_out import free_port, start_mlflow_server, stop

from tuner.tracking import PARENT_TAG, SearchTracker


class LossyProxy:
    """Forwards every request to the server; for the first `drops[path]` requests to a path, the server
    answers but the proxy holds the answer for `hold_s` (past the client's timeout) and then closes the
    connection instead of passing it on."""

    def __init__(self, upstream_port: int, drops: dict[str, int], hold_s: float = 0.0):
        self.hold_s = hold_s
        self.drops, self.delivered = dict(drops), {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                path = self.path.split("?")[0]
                proxy.delivered[path] = proxy.delivered.get(path, 0) + 1
                if proxy.drops.get(path, 0) > 0:  # the server has done the write; its answer is lost
                    proxy.drops[path] -= 1
                    time.sleep(proxy.hold_s)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


CREATE, LOG_BATCH = "/api/2.0/mlflow/runs/create", "/api/2.0/mlflow/runs/log-batch"


@pytest.mark.slow
def test_a_create_and_a_metric_batch_retried_after_a_timeout_are_recorded_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")  # MLflow reads it at every request
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    proxy = LossyProxy(port, {}, hold_s=4.0)
    try:
        tracker = SearchTracker(f"http://127.0.0.1:{proxy.port}", "lossy", run_dir=tmp_path)
        parent = tracker.start_parent("search", {"space": "smoke"}, {"sfkd.kind": "search"})
        proxy.drops = {CREATE: 1, LOG_BATCH: 1}
        # The child's create reaches the server and its answer times out; the params' batch after it too.
        # The queue sends the create again (it finds the run by its key) and MLflow resends the batch.
        tracker.child("t1", "trial_t1", {"gamma": 0.5})
        assert tracker.flush() == 0
        assert proxy.drops == {CREATE: 0, LOG_BATCH: 0}
        assert proxy.delivered[CREATE] == 2  # parent and child: the child's create was sent once, not twice
        run_id = tracker.children["t1"]
        proxy.drops = {LOG_BATCH: 1}
        tracker.log_metrics(run_id, {"val_acc": 50.0, "loss": 1.25}, step=1)  # this batch's answer times out
        tracker.log_metrics(run_id, {"val_acc": 61.0, "loss": 0.75}, step=2)
        tracker.end(run_id)
        assert tracker.flush() == 0
        assert proxy.drops == {LOG_BATCH: 0} and proxy.delivered[CREATE] == 2

        client = MlflowClient(f"http://127.0.0.1:{port}")  # straight to the server
        exp = client.get_experiment_by_name("lossy")
        runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent]
        assert len(runs) == 2 and len(children) == 1 and children[0].info.run_id == run_id
        for key, values in (("val_acc", [50.0, 61.0]), ("loss", [1.25, 0.75])):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            assert history == [(1, values[0]), (2, values[1])]
    finally:
        proxy.close()
        stop(server)
