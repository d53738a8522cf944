"""The README's commands, and those of the docs/ pages it links, run as written, in order, from a
fresh copy of the repository.

Every `python -m ...` and `make ...` line of a fenced `bash` or `console` block is either run here (and
must exit 0) or named in NOT_RUN_HERE with the reason, so a command added to the README or a doc page
must be classified before this test passes."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

NOT_RUN_HERE = {  # a command's start -> why this test does not run it
    "make test": "it is this test suite",
    "python -m tuner.search --space sfkd_gamma": "real CIFAR-10 for an hour or more (docs/real-data.md)",
    "python -m tuner.teacher --arch resnet56 --dataset cifar10": "real CIFAR-10 for 20-30 epochs",
    "python -m tuner.teacher --arch resnet56 --dataset imagefolder --data-dir ~/data/mydata": "the user's own data",
    "python -m tuner.search --space study_methods": "real CIFAR-10 for an hour (RESULTS.md), or a GPU cluster",
    "python -m tuner.search --space study_foreground": "real CIFAR-10, a teacher per shift and about 60 runs: hours "
                                                       "(docs/studies.md)",
    "python -m tuner.heatmaps --runs": "needs run ids of your own search (tests/test_search.py runs it on real ids)",
    "python -m tuner.search --space smoke --resume": "needs an interrupted search (tests/test_reliability.py kills one)",
    "python -m tuner.sync --run-dir": "needs an MLflow outage (tests/test_reliability.py makes one)",
    "python -m tuner.search --space mine.yaml": "the user's own data and resnet18 (tests/test_your_own_model.py runs "
                                                "the same path)",
    "python -m tuner.export --experiment mine": "follows the search above",
    "python -m tuner.final --config mine-best.yaml": "follows the export above",
}


def readme_commands(text: str) -> list[str]:
    """The python -m / make command lines of the README's bash and console blocks, in order, with
    continuation lines joined, `$ ` prompts and trailing comments dropped."""
    commands = []
    for lang, body in re.findall(r"^```(bash|console)\n(.*?)^```", text, flags=re.S | re.M):
        lines = body.replace("\\\n", " ").splitlines()
        for line in lines:
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"\s+", " ", line)
            if line.startswith(("python -m ", "make ")):
                commands.append(line)
    return commands


def documented_text() -> str:
    """The README, then each docs/ page in the order the README first links it."""
    readme = README.read_text()
    pages = list(dict.fromkeys(re.findall(r"\]\(docs/([\w-]+\.md)", readme)))
    return "\n".join([readme] + [(REPO / "docs" / page).read_text() for page in pages])


def test_every_readme_command_is_run_here_or_says_why_not():
    commands = readme_commands(documented_text())
    assert "make demo" in commands and any(c.startswith("python -m tuner.export") for c in commands)
    for skip in NOT_RUN_HERE:
        assert any(c.startswith(skip) for c in commands), f"NOT_RUN_HERE names a command the docs lack: {skip}"


def _fresh_copy(dst: Path) -> Path:
    """The files a clone of this working tree would hold (tracked and not ignored), mtimes kept, with
    the installed .venv beside them so `make` finds the project installed."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    venv = Path(sys.prefix)
    if not (venv / ".installed").is_file():
        pytest.fail(f"run this test from the venv `make` creates (no {venv}/.installed)")
    (dst / ".venv").symlink_to(venv)
    return dst


@pytest.mark.slow
def test_the_readme_commands_run_as_written_from_a_fresh_copy(tmp_path):
    clone = _fresh_copy(tmp_path / "sfkd-tune")
    # As after `source .venv/bin/activate`; PYTHONPATH sends Ray's workers to this copy's code too.
    env = {**os.environ, "PATH": f"{clone / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(clone / ".venv"), "PYTHONPATH": str(clone)}
    ran = []
    for command in readme_commands(documented_text()):
        if command in ran or any(command.startswith(skip) for skip in NOT_RUN_HERE):
            continue  # a command shown twice (the first screen, then the walkthrough) runs once
        r = subprocess.run(command, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{command!r} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        ran.append(command)
    assert "make demo" in ran and any(c.startswith("python -m tuner.final") for c in ran)
    assert (clone / "best.yaml").is_file() and list((clone / "sfkd_runs").glob("final-*/student.sfkd"))
