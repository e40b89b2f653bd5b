"""Build the configured artifact store."""

from __future__ import annotations

from service.settings import Settings
from service.store.base import ArtifactStore


def make_store(settings: Settings) -> ArtifactStore:
    store = _make(settings)
    store.upload_retries = settings.upload_retries
    return store


def _make(settings: Settings) -> ArtifactStore:
    if settings.artifact_store == "s3":
        from service.store.s3 import S3Store

        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
            prefix=settings.s3_prefix,
        )
    from service.store.local import LocalStore

    return LocalStore(settings.artifact_root)
