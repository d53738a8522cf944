"""The project as pip installs it: a built wheel, installed into a fresh environment without the
source tree on the path, lists and runs the shipped spaces and offers the console scripts."""
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SPACES = sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A fresh venv holding only the built wheel; the dependencies already installed in this
    environment are reached through a .pth line (that folder's own .pth files, among them this
    checkout's editable install, are not read from there, so the source tree stays off the path)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True, text=True, timeout=300)
    wheel = next((root / "dist").glob("sfkd_tune-*.whl"))
    env = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "empty"
    work.mkdir()
    return env, work


def _run(env, work, *argv, timeout=120):
    return subprocess.run([str(a) for a in argv], cwd=work, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": f"{env / 'bin'}:/usr/bin:/bin", "HOME": str(work.parent)})


def test_the_wheel_holds_every_shipped_space_and_imports_from_site_packages(installed_wheel):
    env, work = installed_wheel
    code = ("import json, tuner, search_spaces; from tuner.spaces import available_spaces; "
            "print(json.dumps([tuner.__file__, search_spaces.__file__, available_spaces()]))")
    r = _run(env, work, env / "bin" / "python", "-c", code)
    assert r.returncode == 0, r.stderr
    tuner_file, spaces_file, spaces = json.loads(r.stdout)
    assert str(REPO) not in tuner_file and str(REPO) not in spaces_file  # the installed copy, not this checkout
    assert str(env) in tuner_file
    assert spaces == SHIPPED_SPACES and len(spaces) == 19


def test_an_unknown_space_names_the_spaces_the_wheel_ships(installed_wheel):
    env, work = installed_wheel
    r = _run(env, work, env / "bin" / "sfkd-search", "--space", "no_such_space")
    assert r.returncode == 2
    assert "(expected one of " + ", ".join(SHIPPED_SPACES) + " or a .yaml path)" in r.stderr


def test_each_console_script_prints_its_commands_help(installed_wheel):
    env, work = installed_wheel
    for command in ("search", "export", "final", "report", "teacher", "heatmaps", "sync", "checkpoint"):
        r = _run(env, work, env / "bin" / f"sfkd-{command}", "--help")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"usage: sfkd-{command} "), r.stdout
    script = _run(env, work, env / "bin" / "sfkd-search", "--help").stdout
    module = _run(env, work, env / "bin" / "python", "-m", "tuner.search", "--help").stdout
    assert script.replace("sfkd-search", "PROG").split() == module.replace("python -m tuner.search", "PROG").split()


@pytest.mark.slow
def test_the_installed_wheel_runs_the_smoke_space_to_the_end_from_an_empty_folder(installed_wheel):
    env, work = installed_wheel
    r = _run(env, work, env / "bin" / "sfkd-search", "--space", "smoke", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "best trial " in r.stdout and "best config -> " in r.stdout
    assert (work / "mlflow.db").is_file()
    (run_dir,) = [p.parent for p in (work / "sfkd_runs").glob("smoke-*/best_config.yaml")]
    # The console holds the tool's own lines only: Ray's notices and warnings went to search.log.
    own = ("data: ", "teacher resnet8: ", "search smoke-", "[", "status: ", "best trial ", "report: ", "next:", "  ")
    assert [x for x in r.stdout.splitlines() if x.strip() and not x.startswith(own)] == []
    assert [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("teacher resnet8: epoch ")] == []
    assert "Started a local Ray instance." in (run_dir / "search.log").read_text()


def test_the_sdist_ships_every_space_too(tmp_path):
    import tarfile

    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"],
                   cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    with tarfile.open(next(tmp_path.glob("sfkd_tune-*.tar.gz"))) as archive:
        names = archive.getnames()
    shipped = sorted(Path(n).stem for n in names if "/search_spaces/" in n and n.endswith(".yaml"))
    assert shipped == SHIPPED_SPACES
