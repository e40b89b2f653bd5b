"""Starting and stopping real service processes (API, Celery worker, reaper) for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSSP_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd or REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: {text!r} not seen in {timeout}s:\n{self.output()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker and its pool children)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=15)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
        self._log.close()


def start_api(settings: Settings, log_dir: Path, cwd: Path | None = None, **extra_env: str) -> tuple[Proc, str]:
    from .support import free_port

    port = free_port()
    proc = Proc(
        "api",
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        child_env(settings, **extra_env),
        log_dir,
        cwd=cwd,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(base, proc), timeout=30, what="API /healthz")
    return proc, base


def _healthy(base: str, proc: Proc) -> bool:
    if proc.popen.poll() is not None:
        raise RuntimeError(f"API exited:\n{proc.output()[-3000:]}")
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_worker(settings: Settings, log_dir: Path, queue: str | None = None, **extra_env: str) -> Proc:
    """A Celery worker consuming `queue` (default: the settings' celery_queue)."""
    proc = Proc(
        f"worker-{queue}" if queue else "worker",
        [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queue or settings.celery_queue,
            "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", "-n", f"w{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        child_env(settings, **extra_env),
        log_dir,
    )
    proc.wait_for_output("ready.", timeout=40)
    return proc


def start_reaper(settings: Settings, log_dir: Path) -> Proc:
    return Proc("reaper", [sys.executable, "-m", "worker.reaper"], child_env(settings), log_dir)


def create_key(settings: Settings, name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", "create", name],
        env=child_env(settings), cwd=REPO, capture_output=True, text=True, check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Api:
    """A tiny authenticated client."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def submit(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return self.http.post("/jobs", json=body, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in states else None

        return wait_until(check, timeout, f"job {job_id} to reach {states}")

    def wait_done(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_state(job_id, TERMINAL, timeout)

    def cancel(self, job_id: str) -> httpx.Response:
        return self.http.post(f"/jobs/{job_id}/cancel")

    def events(self, job_id: str, limit: int = 7) -> list[dict[str, Any]]:
        """The job's whole history, page by page through the `next` links."""
        items: list[dict[str, Any]] = []
        url: str | None = f"/jobs/{job_id}/events?limit={limit}"
        while url:
            response = self.http.get(url)
            response.raise_for_status()
            page = response.json()
            assert len(page["items"]) <= limit
            items += page["items"]
            url = page["next"]
        return items


def bare_env(roots: list[Path], **extra: str) -> dict[str, str]:
    """The environment without any TWOSSP_* setting except the allowed roots (and what a test adds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOSSP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TWOSSP_ALLOWED_LOCAL_ROOTS"] = ":".join(str(r) for r in roots)
    env["TWOSSP_TORCH_THREADS"] = "1"  # keeps CPU jobs fast on small shared machines
    env.update(extra)
    return env


class Embedded:
    """`twossp serve` in `cwd` with the given environment (no broker: the in-process worker), and alice's key."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        key_out = subprocess.run(
            [sys.executable, "-m", "server.cli", "keys", "create", "alice"],
            cwd=cwd, env=env, capture_output=True, text=True, check=True,
        )
        self.key = key_out.stdout.strip().splitlines()[-1]
        from .support import free_port

        port = free_port()
        self.proc = Proc("serve", [sys.executable, "-m", "server.cli", "serve", "--port", str(port)], env, cwd, cwd=cwd)
        self.base = f"http://127.0.0.1:{port}"
        wait_until(self._up, 30, "twossp serve")
        self.api = Api(self.base, self.key)

    def _up(self) -> bool:
        if self.proc.popen.poll() is not None:
            raise RuntimeError(self.proc.output())
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
