"""Database models and sessions (SQLAlchemy 2, Postgres or SQLite)."""
