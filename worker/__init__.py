"""Job execution: the runner (plain functions), Celery tasks, the embedded worker, and the reaper."""
