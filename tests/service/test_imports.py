"""The API side never imports torch (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

from .procs import REPO

CHECK = """
import sys
import api.app, api.cli, api.client, api.services.inputs, twossp_core.preflight
import worker.embedded, worker.maintenance, worker.reaper, worker.runner, worker.run_one
from api.settings import Settings
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
from api.settings import Settings
s = Settings(data_dir={str(tmp_path)!r}, allowed_local_roots=[{str(stories_model.parents[1])!r}])
validate_request({{"model": {str(stories_model)!r}, "sparsity": 0.375,
                  "calibration": [{str(stories_text)!r} + ":0:10"], "eval": [{str(stories_text)!r}]}}, s)
assert "torch" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
