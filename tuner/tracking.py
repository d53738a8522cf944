"""MLflow's side of a search: where runs go, and the durable write queue. One parent run per search,
one child run per trial; the driver is the only writer (the Ray callbacks that feed it: callbacks.py).

Every write goes through one queue, and is on disk before it is sent: it is appended to the journal
`mlflow_pending.jsonl` in the run folder, and an acknowledgement line is appended once the store has
taken it (the file goes when nothing is left). A driver killed at any moment, even while MLflow's own
retries wait on a server that is down, leaves every unsent write in the journal; the next tracker on
that folder (a resumed search, or `python -m tuner.sync --run-dir DIR`) sends those first. A child run
that could not be created yet gets a placeholder id that is swapped for the real one when it is.
"""
import contextlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.rest_utils import http_request, verify_rest_response

from tuner.errors import UsageError

WRITER_RETRY_S = 5.0  # how soon the writer tries again after the tracking server failed a write
WRITER_DRAIN_S = 60.0  # how long the end of a search waits for a write the server has not answered yet
RUN_KEY_TAG = "sfkd.run_key"  # a run's own write key: a create sent twice still makes one run
PARENT_TAG = "mlflow.parentRunId"
PENDING_FILE = "mlflow_pending.jsonl"

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the training view
CONFIG_ARTIFACT = "config.json"  # a trial's full config; params are cut at PARAM_CHARS characters
PARAM_CHARS = 500  # what every MLflow store accepts (newer servers take 6000; older ones 500)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (as every MLflow tool reads it), else ./mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def normalise_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else ./mlflow.db; relative sqlite and file URIs become
    absolute before Ray changes working directories."""
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def check_tracking_store(uri: str) -> None:
    """A tracking store that cannot work is one line and exit 2 at the start of a command, before anything
    is recorded, not a traceback minutes later: a server that does not answer, a sqlite file whose folder
    is missing or not writable (or a file that is not a sqlite database), a database that refuses the
    connection, or a scheme MLflow has no store for."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme == "sqlite":
        _check_sqlite_file(uri)
    elif scheme == "file":
        _check_folder(uri, Path(uri[len("file://"):]))
    elif scheme in ("postgresql", "mysql", "mssql"):
        _check_database(uri)
    else:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        if scheme not in _tracking_store_registry._registry:  # noqa: SLF001 - the schemes MLflow can open
            raise UsageError(f"tracking URI {uri}: MLflow has no tracking store for scheme {scheme!r} (use sqlite:///FILE, "
                             f"http(s)://HOST:PORT, postgresql://..., mysql://... or a folder)")


def _check_server(uri: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as r:
            if r.status == 200:
                return
            reason = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} from /health"
    except (OSError, ValueError) as e:
        reason = str(getattr(e, "reason", None) or e)
    raise UsageError(f"tracking URI {uri}: no MLflow server answers there ({reason}); start one, or give "
                     f"--tracking-uri / MLFLOW_TRACKING_URI another store")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _check_folder(uri: str, folder: Path) -> None:
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"tracking URI {uri}: {existing or folder} is not a writable folder")


def _check_sqlite_file(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None or str(path) in ("", ":memory:"):
        raise UsageError(f"tracking URI {uri}: expected sqlite:///PATH to a database file")
    if path.is_dir():
        raise UsageError(f"tracking URI {uri}: {path} is a folder, not a sqlite database file")
    if not path.parent.is_dir():
        raise UsageError(f"tracking URI {uri}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
        raise UsageError(f"tracking URI {uri}: {path if path.exists() else path.parent} is not writable")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise UsageError(f"tracking URI {uri}: {path} is not a sqlite database")


def _check_database(uri: str) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10} if uri.startswith("postgresql")
                                          else {})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - a driver that is missing or a database that refuses
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UsageError(f"tracking URI {uri.split('@')[-1]}: the database cannot be reached ({first})") from None


@contextlib.contextmanager
def store_creation_lock(uri: str):
    """Two processes opening a new sqlite store at once both run MLflow's schema creation and one fails
    ("table ... already exists"): the first open of a sqlite store is serialised by a lock file in the
    temp folder (not beside the user's database)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl
    import hashlib
    import tempfile

    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"sfkd-mlflow-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tracking_client(flag: str | None) -> MlflowClient:
    """The client of --tracking-uri, else MLFLOW_TRACKING_URI, else ./mlflow.db, checked to answer. The
    commands that only read (export, report, heatmaps) never create a store: a sqlite file that does
    not exist holds no search."""
    uri = normalise_uri(flag)
    check_tracking_store(uri)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise UsageError(f"tracking URI {uri}: {path} does not exist, so it holds no search (give --tracking-uri, "
                         f"or run this where the search ran)")
    return MlflowClient(tracking_uri=uri)


class SearchTracker:
    """Parent and child runs of one search, addressed by explicit run ids (safe from Ray's threads)."""

    def __init__(self, uri: str, experiment: str, run_dir: Path | None = None):
        self.uri = uri
        self.experiment = experiment
        self.run_dir = Path(run_dir) if run_dir else None
        with store_creation_lock(uri):  # MlflowClient opens the store (and creates a new one's tables)
            self.client = MlflowClient(tracking_uri=uri)
            self.client._tracking_client.store  # noqa: B018, SLF001 - opened here, under the lock
            self.experiment_id = self._experiment_id()
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}  # trial id -> run id (or a placeholder until created)
        self.ended_before: set[str] = set()  # trials whose ending an earlier process of a resumed search wrote
        self.last_step: dict[str, int] = {}  # run id -> last epoch logged (a resume never logs it twice)
        # What an earlier process on this run folder journalled and never saw acknowledged goes first;
        # real_id maps a placeholder run id to the run MLflow created for it.
        self.pending, self.real_id, self._seq, self.unreadable = read_journal(self.run_dir)
        self._init_writer()

    def _init_writer(self):
        self._lock = threading.Lock()  # guards `pending`; only one thread at a time sends
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._stop = False

    # The client holds connections; a pickled tracker (inside Ray's tuner.pkl) rebuilds its own.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("client", "_lock", "_wake", "_writer")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=self.uri)
        self._init_writer()

    # -- the background writer ----------------------------------------------------------------
    def start_writer(self) -> None:
        """From now on writes are sent by a thread of their own, so Ray Tune's controller (which calls
        the callbacks) never waits on the tracking server: a server that is slow, down or black-holed
        delays only the writes, which wait in the queue and the journal."""
        if self._writer is None:
            self._stop = False
            self._writer = threading.Thread(target=self._write_loop, name="mlflow-writer", daemon=True)
            self._writer.start()

    def stop_writer(self, wait_s: float = WRITER_DRAIN_S) -> int:
        """Stop the thread and try once more from this one; returns how many writes are left. A thread
        still inside a call to a server that does not answer is left to it (its writes are idempotent,
        so one the journal keeps and the thread then sends is never recorded twice)."""
        if self._writer is not None:
            self._stop = True
            self._wake.set()
            self._writer.join(wait_s)
            if self._writer.is_alive():
                with self._lock:
                    return len(self.pending)  # every one of them is in the journal already
            self._writer = None
        return self._send()

    def _write_loop(self) -> None:
        while not self._stop:
            left = self._send()
            self._wake.wait(WRITER_RETRY_S if left else None)
            self._wake.clear()

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.tags.get("mlflow.experimentKind") is None:
                self.client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=location, tags=EXPERIMENT_KIND)

    # -- the write queue ----------------------------------------------------------------------
    def _resolve(self, run_id: str) -> str:
        return self.real_id.get(run_id, run_id)

    def _execute(self, op: dict) -> None:
        kind = op["op"]
        if kind == "create_run":
            run_id = self._create_run(op)
            self.real_id[op["placeholder"]] = run_id
            for trial, rid in self.children.items():
                if rid == op["placeholder"]:
                    self.children[trial] = run_id
            return
        run_id = self._resolve(op["run_id"])
        if run_id.startswith("pending-"):
            raise RuntimeError("run not created yet")
        if kind == "log_batch":
            self.client.log_batch(
                run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in op.get("metrics", [])],
                params=[Param(k, v) for k, v in op.get("params", [])], tags=[RunTag(k, v) for k, v in op.get("tags", [])])
        elif kind == "terminate":
            self.client.set_terminated(run_id, status=op["status"])
        elif kind == "artifact":
            self.client.log_artifact(run_id, op["path"], op["artifact_path"])
        elif kind == "text":
            self.client.log_text(run_id, op["text"], op["artifact_file"])
        elif kind == "register_model":
            self._register(run_id, op)

    def _register(self, run_id: str, op: dict) -> None:
        """A final run's model, registered once: a try whose answer was lost left a version that names
        this run, and that version is kept (its tags set again) rather than a second one made."""
        from tuner.mlflow_model import log_student_model, tag_version

        found = self.client.search_model_versions(f"run_id = '{run_id}'")
        if found:
            tag_version(self.uri, op["model_name"], found[0].version, op["version_tags"])
        else:
            log_student_model(self.uri, run_id, Path(op["checkpoint"]), Path(op["preprocessing"]), op["model_name"],
                              op["version_tags"])

    def _create_run(self, op: dict) -> str:
        """Exactly one run per create, even when an earlier try reached the store but its answer was
        lost: the run carries its placeholder as a key that every try looks up first, and over HTTP the
        create is sent once per try (MLflow's in-call retries would send again a POST whose answer timed
        out, making a second run)."""
        key = op["placeholder"]
        found = self.client.search_runs([self.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {**op["tags"], RUN_KEY_TAG: key}
        store = self.client._tracking_client.store  # noqa: SLF001 - the REST store's credentials
        if not isinstance(store, RestStore):
            return self.client.create_run(self.experiment_id, run_name=op["name"], tags=tags).info.run_id
        endpoint = "/api/2.0/mlflow/runs/create"
        body = {"experiment_id": self.experiment_id, "run_name": op["name"], "start_time": int(time.time() * 1000),
                "user_id": tags.get("mlflow.user", "unknown"), "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]}
        response = http_request(store.get_host_creds(), endpoint, "POST", max_retries=0, json=body)
        return verify_rest_response(response, endpoint).json()["run"]["info"]["run_id"]

    def _submit(self, op: dict, send: bool = True) -> None:
        """Queue a write: journalled first, then sent (by the writer thread when one runs). `send=False`
        only keeps it, for a command that already knows the store is not answering."""
        with self._lock:
            op = {**op, "seq": self._seq}
            self._seq += 1
            self.pending.append(op)
            self._journal(op)
        if not send:
            return
        if self._writer is not None:
            self._wake.set()
        else:
            self._send()

    def keep(self, op: dict) -> None:
        self._submit(op, send=False)

    def _journal(self, line: dict) -> None:
        """Append one line to the journal (called with the lock held)."""
        if self.run_dir is None:
            return
        with open(self.run_dir / PENDING_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")

    def flush(self) -> int:
        """Send what is queued (the writer thread stopped first, if one runs). Returns how many are left."""
        return self.stop_writer()

    def _send(self) -> int:
        """Send queued writes in order; stop at the first failure. Returns how many are left."""
        while True:
            with self._lock:
                if not self.pending:
                    break
                op = self.pending[0]
            try:
                self._execute(op)
            except Exception:  # noqa: BLE001 - any failure to reach the store: keep the write
                break
            with self._lock:
                self.pending.pop(0)
                ack = {"ack": op["seq"]}
                if op["op"] == "create_run":
                    ack["real_id"] = {op["placeholder"]: self.real_id[op["placeholder"]]}
                self._journal(ack)
                if not self.pending and self.run_dir is not None:
                    (self.run_dir / PENDING_FILE).unlink(missing_ok=True)  # everything acknowledged
        with self._lock:
            return len(self.pending)

    # -- runs ---------------------------------------------------------------------------------
    def _new_run(self, name: str, tags: dict) -> str:
        placeholder = f"pending-{uuid.uuid4().hex}"
        # MLflow's own source, user and git-commit tags, as its fluent API sets them (UI columns).
        tags = {**resolve_tags(), **tags}
        self._submit({"op": "create_run", "placeholder": placeholder, "name": name, "tags": tags})
        return self._resolve(placeholder)

    def start_parent(self, run_name: str, params: dict, tags: dict) -> str:
        self.parent_id = self._new_run(run_name, tags)
        if self.parent_id.startswith("pending-"):
            raise ConnectionError(f"cannot reach the MLflow tracking server at {self.uri}")
        self.log_params(self.parent_id, params)
        return self.parent_id

    def resume_parent(self, parent_id: str) -> None:
        """Continue a search's parent run: its children and the last epoch each one logged. What the
        killed process left in the journal is sent first, so those runs and epochs count as logged."""
        self._send()
        self.parent_id = parent_id
        self.client.update_run(parent_id, status="RUNNING")
        tags = self.client.get_run(parent_id).data.tags
        for key in ("sfkd.status", "sfkd.reason"):  # an interruption's tags: it is running again
            if key in tags:
                self.client.delete_tag(parent_id, key)
        children = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                           max_results=5000)
        for run in children:
            self.children[run.data.tags["sfkd.trial_id"]] = run.info.run_id
            ending = run.data.tags.get("sfkd.status")
            if ending not in (None, "interrupted"):
                self.ended_before.add(run.data.tags["sfkd.trial_id"])
                if run.info.status == "RUNNING":
                    # The killed process wrote the trial's ending (its tag) but died before it closed the
                    # run (that follows its figures, on a thread): close it now, whatever this process
                    # does next, or it stays RUNNING for good.
                    self.client.set_terminated(run.info.run_id,
                                               "FAILED" if ending in ("diverged", "error") else "FINISHED")
            history = self.client.get_metric_history(run.info.run_id, "lr")  # logged every epoch
            self.last_step[run.info.run_id] = max((m.step for m in history), default=0)
        for op in self.pending:  # still unsent (the store refused them again): they count as logged too
            if op["op"] == "create_run" and op["tags"].get(PARENT_TAG) == parent_id:
                self.children.setdefault(op["tags"]["sfkd.trial_id"], self._resolve(op["placeholder"]))
            for key, _, _, step in op.get("metrics", []) if op["op"] == "log_batch" else []:
                if key == "lr":
                    run_id = self._resolve(op["run_id"])
                    self.last_step[run_id] = max(self.last_step.get(run_id, 0), step)

    def child(self, trial_id: str, run_name: str, config: dict) -> str:
        if trial_id not in self.children:
            run_id = self._new_run(run_name, {PARENT_TAG: self.parent_id, "sfkd.trial_id": trial_id})
            self.children[trial_id] = run_id
            self.log_params(run_id, config)
            self.log_text(run_id, json.dumps(config, indent=2, sort_keys=True), CONFIG_ARTIFACT)
        return self._resolve(self.children[trial_id])

    def log_params(self, run_id: str, config: dict) -> None:
        params = [(k, str(v)[:PARAM_CHARS]) for k, v in sorted(config.items())]
        for i in range(0, len(params), 100):
            self._submit({"op": "log_batch", "run_id": run_id, "params": params[i:i + 100]})

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 200):
            self._submit({"op": "log_batch", "run_id": run_id, "metrics": items[i:i + 200]})

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> bool:
        """Log one epoch of a trial unless that epoch was logged already (a resumed trial replays)."""
        if epoch <= self.last_step.get(run_id, 0):
            return False
        self.log_metrics(run_id, metrics, step=epoch)
        self.last_step[run_id] = epoch
        return True

    def set_tags(self, run_id: str, tags: dict) -> None:
        self._submit({"op": "log_batch", "run_id": run_id, "tags": [(k, str(v)) for k, v in tags.items()]})

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self._submit({"op": "artifact", "run_id": run_id, "path": str(path), "artifact_path": artifact_path})

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._submit({"op": "text", "run_id": run_id, "text": text, "artifact_file": artifact_file})

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self._submit({"op": "terminate", "run_id": run_id, "status": status})


UNREADABLE_FILE = "mlflow_pending.unreadable.jsonl"


def read_journal(run_dir: Path | None) -> tuple[list[dict], dict, int, list[int]]:
    """(unacknowledged writes in order, placeholder -> run id, the next sequence number, the numbers
    of lines that are not a complete write). A line cut off by a kill cannot be sent; it is moved to
    `mlflow_pending.unreadable.jsonl` beside the journal, and every good line is still sent. Journals
    of earlier versions (one write a line, no sequence numbers) read as they are."""
    path = Path(run_dir) / PENDING_FILE if run_dir is not None else None
    if path is None or not path.exists():
        return [], {}, 0, []
    ops, acked, real_id, bad, bad_text = [], set(), {}, [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not ("ack" in entry or entry.get("op") in WRITE_OPS
                                                   or set(entry) == {"real_id"}):
                raise ValueError(line)
        except ValueError:
            bad.append(number)
            bad_text.append(line)
            continue
        real_id.update(entry.pop("real_id", None) or {})
        if "ack" in entry:
            acked.add(entry["ack"])
        elif "op" in entry:
            entry.setdefault("seq", -len(ops) - 1)  # an old journal's line: unique, never acknowledged
            ops.append(entry)
    if bad_text:
        with open(path.with_name(UNREADABLE_FILE), "a") as f:
            f.write("".join(t + "\n" for t in bad_text))
    pending = [op for op in ops if op["seq"] not in acked]
    nxt = max((op["seq"] for op in ops), default=-1) + 1
    nxt = max(nxt, max(acked, default=-1) + 1)
    # The journal is written again as what is left, so the moved lines and the acknowledged ones go.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in ([{"real_id": real_id}] if real_id else []) + pending))
    os.replace(tmp, path)
    if not pending:
        path.unlink()
    return pending, real_id, nxt, bad


WRITE_OPS = ("create_run", "log_batch", "terminate", "artifact", "text", "register_model")


def sync_pending(run_dir: Path, uri: str, experiment: str) -> tuple[int, list[int]]:
    """Upload the writes a search or final run could not send (python -m tuner.sync). Returns how many
    are left and the numbers of the journal's lines that could not be read."""
    tracker = SearchTracker(uri, experiment, run_dir)
    return tracker.flush(), tracker.unreadable
