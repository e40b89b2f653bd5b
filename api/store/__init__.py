"""Artifact storage: a local directory or any S3-compatible bucket, behind one interface."""

from api.store.base import ArtifactStore, Manifest, build_manifest
from api.store.factory import make_store

__all__ = ["ArtifactStore", "Manifest", "build_manifest", "make_store"]
