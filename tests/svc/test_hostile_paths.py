"""Hostile local paths in every path field (model, calibration, eval, heal data) of the API, the dashboard's form
and the CLI: symlink loops, self-referencing links in a model directory, components over 255 bytes, NUL, `..`,
links out of the allowed roots, FIFOs, device files, unreadable files, directories where files are expected.
Each gets a 4xx (one line in the CLI) naming the field, never a 5xx, and no file outside the roots is read."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api.app import create_app
from service.db.session import Database
from service.keys import create_key
from service.settings import Settings

from .support import job_body

FIELDS = ("model", "calibration", "eval", "heal")
# what a refusal must name, per field (a malformed data source is refused by its spelling, "data source '...'")
NAMED = {"model": ("model",), "calibration": ("calibration", "data source"), "eval": ("eval", "data source"),
         "heal": ("heal", "data source")}


@dataclass
class Tree:
    root: Path  # an allowed root full of traps
    outside: Path  # not allowed: every file here is a canary that must never be read
    canaries: list[Path]
    names: list[str]  # the entries of `root`


def _copy_model(source: Path, target: Path) -> None:
    target.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, target / name)


def _age_atime(path: Path) -> None:
    """atime an hour before mtime: the next read moves it (relatime updates an atime older than the mtime)."""
    info = path.stat()
    os.utime(path, ns=(info.st_mtime_ns - 3600 * 10**9, info.st_mtime_ns), follow_symlinks=False)


def _atimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_atime_ns for p in paths}


@pytest.fixture
def tree(tmp_path: Path, stories_model: Path, stories_text: Path) -> Tree:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("outside the roots<|endoftext|>" * 50)
    _copy_model(stories_model, outside / "model")

    _copy_model(stories_model, root / "model")
    _copy_model(stories_model, root / "model-loop")
    (root / "model-loop" / "self").symlink_to("self")  # a self-referencing link inside a model directory
    _copy_model(stories_model, root / "model-out")
    (root / "model-out" / "tokenizer.json").unlink()
    (root / "model-out" / "tokenizer.json").symlink_to(secret)
    shutil.copy(stories_text, root / "text.txt")
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    os.mknod(root / "device", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    (root / "unreadable.txt").write_text("x<|endoftext|>" * 10)
    (root / "unreadable.txt").chmod(0)  # as root still readable: then it only must not break anything
    (root / "loop").symlink_to("loop")
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    (root / "link-out-file").symlink_to(secret)
    (root / "link-out-dir").symlink_to(outside / "model", target_is_directory=True)
    (root / "link-up").symlink_to("..", target_is_directory=True)
    (root / "dangling").symlink_to(root / "missing")

    canaries = [secret, outside / "model", *(outside / "model").iterdir()]
    for path in canaries:
        _age_atime(path)
    control = outside / "control.txt"
    control.write_text("control")
    _age_atime(control)
    before = control.stat().st_atime_ns
    control.read_text()
    assert control.stat().st_atime_ns != before, "this file system does not record reads in atime (noatime)"
    return Tree(root, outside, canaries, sorted(p.name for p in root.iterdir()))


def hostile_path(tree: Tree) -> st.SearchStrategy[str]:
    """Absolute and relative paths through the trap tree and outside it, with odd components mixed in."""
    component = st.one_of(
        st.sampled_from(tree.names),
        st.sampled_from(["..", ".", "", "a" * 256, "é" * 128, "nul\x00byte", "\ud800", "config.json", "missing"]),
        st.text(min_size=1, max_size=12),
    )
    prefix = st.sampled_from([str(tree.root), str(tree.outside), "/", "", "./", "~/", str(tree.root / "..")])
    return st.builds(
        lambda head, parts, rng: (head.rstrip("/") + "/" if head else "") + "/".join(parts) + rng,
        prefix,
        st.lists(component, min_size=0, max_size=4),
        st.sampled_from(["", "", ":0:5", ":3:"]),
    )


@pytest.fixture
def app_settings(tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, tree: Tree) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url,
        allowed_local_roots=[tree.root, test_data], rate_limit_per_s=10_000, rate_limit_burst=10_000,
        max_active_jobs_per_user=100_000,
    )


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as test_client:
        yield test_client


@pytest.fixture
def key(app_settings: Settings) -> str:
    db = Database(app_settings)
    with db.session() as session:
        value = create_key(session, "mallory")
    db.dispose()
    return value


def request_with(field: str, value: str, model: Path, text: Path) -> dict[str, Any]:
    body = job_body(model, text)
    if field == "model":
        body["model"] = value
    elif field == "heal":
        body["heal"] = {"data": [value], "steps": 1}
    else:
        body[field] = [value]
    return body


def local_paths(spec: dict[str, Any]) -> list[str]:
    heal = spec.get("heal") or {}
    sources = [*spec["calibration"], *spec["eval"], *(heal.get("data") or [])]
    return [spec["model"], *(re.sub(r":\d*:\d*$", "", s) for s in sources)]


@pytest.mark.slow
def test_hostile_paths_get_a_4xx_naming_the_field_and_nothing_outside_the_roots_is_read(
    client: TestClient, key: str, tree: Tree, stories_model: Path, stories_text: Path
) -> None:
    before = _atimes(tree.canaries)
    roots = [tree.root.resolve(), stories_model.parents[2].resolve()]
    seen: dict[int, int] = {}

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(field=st.sampled_from(FIELDS), value=hostile_path(tree))
    @example(field="model", value=f"{tree.root}/model")  # paths that are fine are accepted
    @example(field="model", value=f"{tree.root}/dir/../model/")
    @example(field="calibration", value=f"{tree.root}/text.txt:0:5")
    @example(field="heal", value=f"{tree.root}/link-up/root/text.txt")
    def check(field: str, value: str) -> None:
        body = request_with(field, value, stories_model, stories_text)
        response = client.post(  # ensure_ascii: a lone surrogate travels as a JSON escape
            "/jobs", content=json.dumps(body), headers={"Authorization": f"Bearer {key}",
                                                        "Content-Type": "application/json"},
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code in (202, 422), (field, value, response.status_code, response.text)
        if response.status_code == 422:
            detail = response.json()["detail"]
            assert any(name in detail for name in NAMED[field]), (field, value, detail)
            return
        for path in local_paths(response.json()["spec"]):  # accepted: every local path is real and inside
            if path.startswith("/"):
                assert any(Path(path).resolve().is_relative_to(root) for root in roots), (field, value, path)

    check()
    assert _atimes(tree.canaries) == before, "a file outside the allowed roots was read"
    assert seen.get(422, 0) > 100 and seen.get(202, 0) >= 4, seen  # refusals, and the paths that are fine accepted


@pytest.mark.parametrize(
    ("field", "name", "message"),
    [
        ("model", "loop", "symlink loop"),
        ("model", "model-loop", "self is a symlink loop"),
        ("model", "a" * 256, "longer than 255 bytes"),
        ("model", "model-out", "tokenizer.json links outside the allowed roots"),
        ("model", "link-out-dir", "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("model", "text.txt", "not a directory"),
        ("calibration", "loop", "symlink loop"),
        ("calibration", "ping", "symlink loop"),
        ("calibration", "a" * 256, "longer than 255 bytes"),
        ("calibration", "fifo", "not a regular file"),
        ("calibration", "device", "not a regular file"),
        ("eval", "dir", "not a regular file"),
        ("eval", "link-out-file", "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("eval", "link-up/../etc/passwd", "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("heal", "fifo", "not a regular file"),
        ("heal", "dangling", "no such file"),
    ],
)
def test_each_trap_is_refused_with_its_reason(
    client: TestClient, key: str, tree: Tree, stories_model: Path, stories_text: Path, field: str, name: str,
    message: str,
) -> None:
    body = request_with(field, f"{tree.root}/{name}", stories_model, stories_text)
    response = client.post("/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert message in detail and any(n in detail for n in NAMED[field]), detail


@pytest.mark.slow
def test_the_form_shows_a_hostile_path_error_at_its_field(
    tmp_path: Path, tree: Tree, test_data: Path, stories_model: Path, stories_text: Path
) -> None:
    from .test_ui import csrf_of, form, signed_in

    ui_settings = Settings(data_dir=tmp_path / "ui", embedded_worker=False,
                           allowed_local_roots=[tree.root, test_data])
    from service.db.migrate import upgrade_head

    upgrade_head(ui_settings)
    app = create_app(ui_settings)
    try:
        alice = signed_in(app, "alice")
        for field, name, message in [
            ("model", "loop", "symlink loop"), ("model", "a" * 256, "longer than 255 bytes"),
            ("calibration", "fifo", "not a regular file"), ("eval", "ping", "symlink loop"),
        ]:
            data = {**form(stories_model, stories_text, **{field: f"{tree.root}/{name}"}), "csrf": csrf_of(alice)}
            response = alice.post("/ui/submit", data=data)
            assert response.status_code == 422, response.text[-2000:]
            error = re.search(rf'id="error-{field}" role="alert">([^<]*)<', response.text)
            assert error is not None and message in error[1], (field, name, response.text[-2000:])
    finally:
        app.state.db.dispose()


def test_the_cli_answers_hostile_paths_with_one_line(
    tmp_path: Path, tree: Tree, stories_model: Path, stories_text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from twossp_core.cli.main import main

    root, text = tree.root, str(stories_text)
    base = ["prune", "--sparsity", "0.5", "--no-progress"]
    for args, message in [
        (["--model", f"{root}/loop", "--eval", text], "model"),
        (["--model", f"{root}/{'a' * 256}", "--eval", text], "longer than 255 bytes"),
        (["--model", f"{root}/text.txt", "--eval", text], "not a directory"),
        (["--model", str(stories_model), "--calibration", f"{root}/fifo", "--eval", text], "not a regular file"),
        (["--model", str(stories_model), "--calibration", f"{root}/device", "--eval", text], "not a regular file"),
        (["--model", str(stories_model), "--calibration", text, "--eval", f"{root}/dir"], "not a regular file"),
        (["--model", str(stories_model), "--calibration", text, "--eval", f"{root}/ping"], "symlink loop"),
        (["--model", str(stories_model), "--calibration", text, "--eval", text, "--heal", "kd",
          "--heal-option", f"data={root}/loop"], "symlink loop"),
        (["--model", str(stories_model), "--calibration", text, "--eval", text, "--out", f"{root}/loop"],
         "--out"),
        (["--model", str(stories_model), "--calibration", text, "--eval", text, "--out", f"{root}/{'b' * 256}"],
         "longer than 255 bytes"),
    ]:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "out")]
        assert main([*base, *args]) == 2, args
        errors = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("twossp: error: ") and message in errors[0], errors
