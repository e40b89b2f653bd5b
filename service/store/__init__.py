"""Artifact storage: a local directory or any S3-compatible bucket, behind one interface."""

from service.store.base import ArtifactStore, Manifest, build_manifest
from service.store.factory import make_store

__all__ = ["ArtifactStore", "Manifest", "build_manifest", "make_store"]
