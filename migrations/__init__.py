"""Alembic migrations: the only way the service schema is created or changed."""
