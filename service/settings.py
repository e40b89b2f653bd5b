"""All service settings in one object, read from `TWOSSP_*` environment variables.

With nothing set, everything is embedded: SQLite and artifacts under `TWOSSP_DATA_DIR` (default
`./twossp-data`), no broker (an in-process worker polls the database), local artifact folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

WORKER_EXPIRY_INTERVALS = 3  # the default worker_expiry_s, in advertise intervals


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWOSSP_", extra="ignore")

    # storage locations
    data_dir: Path = Field(Path("twossp-data"), description="root for the embedded database and artifacts")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite under data_dir")
    broker_url: str | None = Field(None, description="Celery broker (redis://...); unset → embedded worker")
    auto_migrate: bool = Field(True, description="run `alembic upgrade head` when serving / creating keys")

    # artifacts
    artifact_store: Literal["local", "s3"] = "local"
    artifact_dir: Path | None = Field(None, description="local store root; default data_dir/artifacts")
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="the S3 endpoint as clients reach it, for presigned download URLs (default: s3_endpoint_url)"
    )
    s3_bucket: str = "twossp-artifacts"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_prefix: str = ""
    upload_retries: int = Field(4, ge=0, description="retries of a failed artifact upload (backoff 0.5 s, doubling)")
    artifact_gc_interval_s: float = Field(
        3600.0, gt=0, description="how often the reaper deletes attempts that never published a manifest and "
        "expires unused shared artifacts (shared_artifact_ttl_days)"
    )
    presign_expiry_s: int = Field(300, ge=10, le=7 * 24 * 3600)
    shared_artifact_ttl_days: float = Field(
        30.0, ge=0, description="the reaper deletes a shared dense artifact (a sweep's dense measurements, heal "
        "control or statistic, `shared/<key>` in the artifact store) that no cell has read or written for this many "
        "days (checked every artifact_gc_interval_s; one whose lock a cell holds is kept); a cell that needs a "
        "deleted one computes it again. 0 keeps them forever",
    )

    # request validation
    allowed_local_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="`:`-separated roots under which local models/data are accepted"
    )
    allow_hub: bool = Field(True, description="accept Hugging Face hub ids for models and hub dataset names")
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_json_depth: int = Field(32, ge=2, description="deepest nesting of arrays/objects accepted in a request")
    page_size_max: int = 100

    # API capacity: every request handler thread can always get a database connection (no deadlock), and a
    # request that still finds the pool exhausted fails fast with 503 + Retry-After instead of hanging
    api_threads: int = Field(16, ge=1, description="threads running request handlers (per API process)")
    db_pool_size: int | None = Field(None, ge=1, description="pooled connections per process; default api_threads + 4")
    db_pool_timeout_s: float = Field(3.0, gt=0, description="wait this long for a pooled connection, then 503")
    retry_after_s: int = Field(2, ge=1, description="Retry-After (seconds) sent with 503 answers")
    max_in_flight_requests: int = Field(
        64, ge=1, description="requests one API process serves at once; one more gets 503 with Retry-After at once "
        "(/healthz and /readyz are always answered)",
    )

    # limits: per API key (per API process) request rate, and per user jobs queued or running at once
    rate_limit_per_s: float = Field(20.0, gt=0, description="sustained requests per second per API key")
    rate_limit_burst: int = Field(100, ge=1, description="requests an API key may send at once above the rate")
    auth_cache_s: float = Field(
        5.0, ge=0, description="cache key lookups this long (a revoked key keeps working that much longer)"
    )
    max_active_jobs_per_user: int = Field(100, ge=1, description="queued + running jobs a user may have")
    # planned cost (twossp_core.plan.cost: tokens through the model): defaults that the 2-core test machine finishes in
    # under an hour with the larger test model (c4llama-8l, 2.1 M parameters; docs/service.md)
    max_job_tokens: int = Field(
        40_000_000, ge=1, description="planned work of one job in tokens through the model (calibration, every "
        "evaluation, the heal's tokens x its passes); a job planning more gets 422",
    )
    max_sweep_runs: int = Field(32, ge=1, description="methods x sparsities one sweep may run; more gets 422")
    max_active_tokens_per_user: int = Field(
        160_000_000, ge=1, description="planned work of a user's queued and running jobs together; a submission "
        "beyond it gets 429 (at least max_job_tokens)",
    )
    # failed authentications (a missing or wrong API key, a failed dashboard sign-in) per client address: after
    # `auth_failure_burst` of them the address gets 429 on every authenticated route, valid key or not, and
    # regains one attempt every 1 / `auth_failure_rate_per_s` seconds
    auth_failure_burst: int = Field(
        20, ge=1, description="failed authentications a client address may make before it gets 429"
    )
    auth_failure_rate_per_s: float = Field(
        0.1, gt=0, description="failed authentications per second a client address regains once its burst is spent"
    )

    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = Field(
        "INFO", description="log level of the worker processes (`twossp serve --log-level` sets it for its children)"
    )

    # jobs
    job_soft_time_limit_s: float = Field(6 * 3600, gt=0)
    job_time_limit_s: float = Field(6 * 3600 + 300, gt=0)
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_interval_s: float | None = Field(None, gt=0, description="default: min(1, lease/4)")
    max_attempts: int = Field(3, ge=1)
    reaper_interval_s: float = Field(10.0, gt=0)
    dispatch_grace_s: float = Field(5.0, ge=0, description="age before an undispatched job is republished")
    redispatch_after_s: float = Field(900.0, gt=0, description="republish a job queued this long")
    redispatch_unheld_after_s: float = Field(
        30.0, gt=0, description="republish a queued job the broker does not hold this long after its dispatch"
    )
    record_retry_s: float = Field(
        600.0, ge=0, description="a worker retries recording a finished run's outcome this long (database outage)"
    )
    claim_retry_max_s: float = Field(10.0, gt=0, description="longest wait between retries of a failed claim")
    cancel_grace_s: float = Field(
        0.3, ge=0, description="a running job is interrupted as soon as its worker sees its cancel; one still running "
        "this long after (stuck in one call that cannot be interrupted) is killed",
    )

    # workers
    worker_concurrency: int = Field(1, ge=1, description="jobs at once per worker (one per GPU)")
    worker_max_tasks_per_child: int | None = Field(
        None, ge=1, description="replace a Celery pool process after this many messages (default never: jobs run in "
        "processes of their own)",
    )
    embedded_worker: bool = Field(True, description="run the in-process worker when no broker is set")
    embedded_poll_s: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="CPU threads per job (torch.set_num_threads)")
    task_data: Path | None = Field(
        None, description="zero-shot task files the workers read, one folder per task (winogrande/, arc_easy/, ..., "
        "the layout of shared/data/tasks); a task without local files is read from the Hugging Face Hub",
    )
    celery_queue: str = Field(
        "twossp", description="the queue jobs go to while no worker has advertised its class (see worker_queue)"
    )
    work_dir: Path | None = Field(None, description="scratch space for running jobs; default data_dir/work")

    # worker classes: what a Celery worker advertises, and how long the API routes jobs to what it advertised
    worker_queue: str | None = Field(
        None, description="the queue this worker consumes: its class, as jobs are routed (default celery_queue)"
    )
    worker_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="what this worker's jobs compute on; auto asks torch in a short subprocess at start"
    )
    worker_memory: int | None = Field(
        None, description="memory this worker offers a job: its GPU's (cuda) or the host's (cpu); default detected"
    )
    worker_host_memory: int | None = Field(
        None, description="host memory this worker offers a job (cuda workers; default: the machine's total)"
    )
    worker_gpus: int | None = Field(
        None, ge=1, le=64, description="GPUs a cuda worker may spread a job over (multi-device execution), each "
        "offering worker_memory; default: the visible GPUs when the memory is detected, else 1",
    )
    worker_advertise_interval_s: float = Field(10.0, gt=0, description="how often a worker renews its advertisement")
    worker_expiry_s: float = Field(
        default_factory=lambda data: WORKER_EXPIRY_INTERVALS * data.get("worker_advertise_interval_s", 10.0), gt=0,
        description="a worker not seen this long no longer counts when jobs are routed. A worker that stops (or is "
        "killed) deletes its rows at once; this expiry covers the rest: a machine that crashed or lost power, an "
        "advertiser killed with its worker. Default: 3 advertise intervals (30 s), so that two renewals lost to a "
        "database restart do not take a live class off the routes, while a dead class takes jobs for at most "
        "that long; it must exceed the interval",
    )
    worker_class_grace_s: float = Field(
        30.0, ge=0, description="queued jobs whose worker class has had no live worker this long (counted from the "
        "expiry of its last worker's advertisement, or its withdrawal) are re-routed to a live class that holds "
        "them, or failed naming the class they need; while no class at all has a live worker they wait",
    )

    @field_validator("allowed_local_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(":") if part.strip()]
        return value

    @field_validator("worker_memory", "worker_host_memory", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """Bytes, or a size with a unit (24GB, 80GiB); empty is unset."""
        if value is None or value == "":
            return None
        from twossp_core.errors import InvalidSpec
        from twossp_core.plan.sizes import parse_size

        try:
            return parse_size(value)
        except InvalidSpec as exc:
            raise ValueError(str(exc)) from None

    @field_validator("broker_url", "database_url", "s3_endpoint_url", "s3_public_endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("job_time_limit_s")
    @classmethod
    def _hard_after_soft(cls, value: float, info) -> float:  # type: ignore[no-untyped-def]
        soft = info.data.get("job_soft_time_limit_s")
        if soft is not None and value < soft:
            raise ValueError("job_time_limit_s must be >= job_soft_time_limit_s")
        return value

    @field_validator("worker_expiry_s")
    @classmethod
    def _expiry_after_interval(cls, value: float, info) -> float:  # type: ignore[no-untyped-def]
        interval = info.data.get("worker_advertise_interval_s")
        if interval is not None and value <= interval:
            raise ValueError("worker_expiry_s must exceed worker_advertise_interval_s (a live worker would expire "
                             "between its renewals)")
        return value

    @field_validator("max_active_tokens_per_user")
    @classmethod
    def _quota_holds_a_job(cls, value: int, info) -> int:  # type: ignore[no-untyped-def]
        job = info.data.get("max_job_tokens")
        if job is not None and value < job:
            raise ValueError("max_active_tokens_per_user must be >= max_job_tokens (a job within its limit would "
                             "never fit the quota)")
        return value

    @field_validator("db_pool_size")
    @classmethod
    def _pool_covers_threads(cls, value: int | None, info) -> int | None:  # type: ignore[no-untyped-def]
        threads = info.data.get("api_threads")
        if value is not None and threads is not None and value < threads:
            raise ValueError("db_pool_size must be >= api_threads (each request session needs a connection)")
        return value

    # derived values
    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'twossp.db'}"

    @property
    def artifact_root(self) -> Path:
        return (self.artifact_dir or self.resolved_data_dir / "artifacts").expanduser().resolve()

    @property
    def scratch_root(self) -> Path:
        return (self.work_dir or self.resolved_data_dir / "work").expanduser().resolve()

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat_interval_s or min(1.0, self.lease_seconds / 4)

    def resolved_roots(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.allowed_local_roots]

    def to_env(self) -> dict[str, str]:
        """The settings as `TWOSSP_*` variables, for child processes."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if name == "data_dir":
                env["TWOSSP_DATA_DIR"] = str(self.resolved_data_dir)
            elif name == "allowed_local_roots":
                env["TWOSSP_ALLOWED_LOCAL_ROOTS"] = ":".join(str(p) for p in value)
            elif name == "s3_secret_key":
                env["TWOSSP_S3_SECRET_KEY"] = self.s3_secret_key.get_secret_value() if self.s3_secret_key else ""
            else:
                env[f"TWOSSP_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env
