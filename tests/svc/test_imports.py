"""Layering: what each package may import (read from the source, function-local imports included), and the
API side never imports torch (checked in a fresh interpreter)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .procs import REPO

# api -> service <- worker -> twossp_core; server wires api and worker together; migrations use service
ALLOWED: dict[str, set[str]] = {
    "twossp_core": set(),
    "service": {"twossp_core", "migrations"},
    "api": {"service", "twossp_core"},
    "worker": {"service", "twossp_core"},
    "server": {"api", "worker", "service", "twossp_core"},
    "migrations": {"service"},
}


def imported_packages(path: Path) -> set[str]:
    """The first-party top-level packages a module imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & ALLOWED.keys()


def layering_violations(root: Path) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for name in sorted(imported_packages(path) - allowed - {package}):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_packages_import_only_the_layers_below_them() -> None:
    assert layering_violations(REPO) == []


def test_the_layering_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "api" / "routes.py").write_text("def f():\n    from worker.embedded import EmbeddedWorker\n")
    (tmp_path / "worker" / "tasks.py").write_text("import api.app\nfrom service import lifecycle\n")
    (tmp_path / "twossp_core" / "x.py").write_text("from service.settings import Settings\n")
    assert layering_violations(tmp_path) == [
        "twossp_core/x.py imports service",
        "api/routes.py imports worker",
        "worker/tasks.py imports api",
    ]


def state_writers(root: Path) -> list[str]:
    """Service modules other than the lifecycle that issue UPDATEs on jobs or assign a job's state."""
    found = []
    for package in ("api", "worker", "server", "service"):
        for path in sorted((root / package).rglob("*.py")):
            if path.relative_to(root).as_posix() == "service/lifecycle.py":
                continue
            text = path.read_text()
            if "update(Job)" in text or ".state = " in text:
                found.append(str(path.relative_to(root)))
    return found


def test_only_the_lifecycle_module_writes_job_state() -> None:
    assert state_writers(REPO) == []


CHECK = """
import sys
import api.app, api.client, api.services.inputs, server.cli, twossp_core.preflight
import service.lifecycle, service.db.migrate, service.keys, service.store
import worker.embedded, worker.maintenance, worker.reaper, worker.runner, worker.run_one
from service.settings import Settings
api.app.create_app(Settings(data_dir=sys.argv[1]))
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m == "transformers")
print(loaded)
assert not loaded, loaded
"""


def test_api_and_worker_parents_do_not_import_torch(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_validating_a_request_does_not_import_torch(tmp_path, stories_model, stories_text) -> None:
    code = f"""
import sys
from api.services.inputs import validate_request
from service.settings import Settings
s = Settings(data_dir={str(tmp_path)!r}, allowed_local_roots=[{str(stories_model.parents[1])!r}])
validate_request({{"model": {str(stories_model)!r}, "sparsity": 0.375,
                  "calibration": [{str(stories_text)!r} + ":0:10"], "eval": [{str(stories_text)!r}]}}, s)
assert "torch" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
