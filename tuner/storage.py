"""Where a search keeps its runs: a local folder, or any URI Ray's storage accepts (s3://, gs://, ...).

Ray Tune writes its own state and the trials' checkpoints there through pyarrow. The driver does the
same for the run's files (search.json, best_config.yaml, report/), through the same pyarrow file
system, so nothing needs a shared disk. A remote search also keeps a local folder for what belongs to
the driver's machine: its log and the journal of MLflow writes that could not be sent yet.
"""
import hashlib
import os
import posixpath
from pathlib import Path

import pyarrow
import pyarrow.fs as pafs

from tuner.errors import UsageError


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def parent_of(location: str) -> str:
    """The storage a run folder (path or URI) lives in."""
    return location.rstrip("/").rsplit("/", 1)[0] if is_uri(location) else str(Path(location).parent)


def read_run_state(text: str, where, required: tuple) -> dict:
    """A run folder's own record (search.json, final.json) as a dict with the keys the command needs,
    or one line naming the file: a truncated or hand-edited record is never a traceback."""
    import json

    try:
        state = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}; truncated?): the run's record is "
                         f"damaged") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise UsageError(f"{where} lacks {', '.join(missing)}: not a complete record of a run")
    return state


def check_run_name(name: str) -> None:
    """A run name is one folder name inside the storage: never a path that leaves it."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise UsageError(f"--name {name!r}: a run name is one folder name (no '/', not '.' or '..', no surrounding "
                         f"spaces), created inside --storage-path")


class RunStorage:
    def __init__(self, location: str):
        self.remote = is_uri(location)
        if self.remote:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(location)
            except (pyarrow.ArrowException, ValueError, OSError) as e:
                raise UsageError(f"--storage-path {location}: {str(e).splitlines()[0]}") from None
            self.location = location.rstrip("/")
            home = Path(os.environ.get("SFKD_CACHE") or Path.home() / ".cache" / "sfkd-data")
            self.local_root = home / "runs" / hashlib.sha1(self.location.encode()).hexdigest()[:12]
        else:
            path = Path(location).expanduser().resolve()
            self.fs, self.root, self.location, self.local_root = pafs.LocalFileSystem(), str(path), str(path), path

    def __str__(self) -> str:
        return self.location

    def uri(self, *parts: str) -> str:
        """A path in this storage as Ray and the user name it (a URI, or an absolute local path)."""
        return "/".join([self.location, *parts])

    def local(self, name: str) -> Path:
        """This machine's folder for run `name`: the run folder itself when the storage is local."""
        path = self.local_root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def claim(self, name: str) -> Path:
        """Make this machine's folder for a new run `name`, atomically: of two searches started with one
        name, the second finds it taken (one line, exit 2) and touches nothing of the first's. A remote
        storage that already holds that run is refused too."""
        check_run_name(name)
        if self.remote and self.exists(f"{name}/search.json"):
            raise UsageError(f"{self.uri(name)} already holds a search; choose another --name")
        path = self.local_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise UsageError(f"{self.uri(name)} already exists (another search's run folder); choose another "
                             f"--name") from None
        return path

    def release(self, run_dir: Path) -> None:
        """Remove a run folder this process claimed and recorded nothing in, and the storage folder too
        when this process made it and it is empty again: a search that stops before its first record
        leaves nothing behind."""
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        if getattr(self, "made_root", False):
            try:
                Path(self.root).rmdir()
            except OSError:  # not empty: another search's folders are there
                pass

    def _path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def _fail(self, what: str, e: Exception):
        first = (getattr(e, "strerror", None) or str(e)).splitlines()[0]
        raise UsageError(f"--storage-path {self.location}: cannot {what} ({first})") from None

    def check_writable(self) -> None:
        """Reachable and writable, or one clear line: checked before anything is recorded."""
        probe = self._path(".write-test")
        try:
            if self.remote:
                self.fs.create_dir(self.root, recursive=True)
                with self.fs.open_output_stream(probe) as f:
                    f.write(b"ok")
                self.fs.delete_file(probe)
            else:  # pathlib's errors name the cause in a few words
                self.made_root = not Path(self.root).exists()
                Path(self.root).mkdir(parents=True, exist_ok=True)
                Path(probe).write_text("ok")
                Path(probe).unlink()
        except (OSError, pyarrow.ArrowException) as e:
            first = (getattr(e, "strerror", None) or str(e)).splitlines()[0]
            raise UsageError(f"--storage-path {self.location} is not writable ({first})") from None

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound
        except (OSError, pyarrow.ArrowException) as e:
            self._fail(f"read {rel}", e)

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read().decode()

    def write_text(self, rel: str, text: str) -> None:
        self.fs.create_dir(posixpath.dirname(self._path(rel)), recursive=True)
        with self.fs.open_output_stream(self._path(rel)) as f:
            f.write(text.encode())

    def mtime(self, rel: str) -> float:
        info = self.fs.get_file_info(self._path(rel))
        return info.mtime.timestamp() if info.mtime else 0.0

    def folders(self) -> list[str]:
        """The names of the folders at the top of this storage."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except (OSError, pyarrow.ArrowException) as e:
            self._fail("list it", e)
        return [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]

    def publish(self, local_path: Path, rel: str) -> None:
        """Copy a file or folder of this machine into the storage (nothing to do for a local run folder)."""
        dest = self._path(rel)
        if not self.remote and Path(local_path).resolve() == Path(dest).resolve():
            return
        self.fs.create_dir(dest if Path(local_path).is_dir() else posixpath.dirname(dest), recursive=True)
        pafs.copy_files(str(local_path), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def fetch(self, rel: str, local_path: Path) -> Path:
        """Copy a file of the storage to this machine."""
        src = self._path(rel)
        if not self.remote and Path(local_path).resolve() == Path(src).resolve():
            return Path(local_path)
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(src, str(local_path), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return Path(local_path)

    def relative(self, path: str) -> str | None:
        """`path` (as a Ray Checkpoint names it, without the URI scheme) relative to this storage."""
        root = self.root.rstrip("/") + "/"
        return path[len(root):] if path.startswith(root) else None
