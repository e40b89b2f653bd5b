"""HTTP service for twossp: job submission, status, artifacts. Never imports torch."""
