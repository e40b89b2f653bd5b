# API image: FastAPI + SQLAlchemy + Celery client + boto3, no torch.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t twossp-api .
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the API process imports: the service packages plus the torch-free parts of twossp_core
# (spec, errors, registries, preflight). torch/transformers are deliberately not installed.
COPY docker/requirements-api.txt /tmp/requirements-api.txt
RUN pip install -r /tmp/requirements-api.txt

COPY twossp_core/ /app/twossp_core/
COPY service/ /app/service/
COPY api/ /app/api/
COPY server/ /app/server/
COPY worker/ /app/worker/
COPY migrations/ /app/migrations/
COPY alembic.ini /app/alembic.ini

# fail the build if anything on the API path pulls in torch
RUN python -c "import sys, api.app, server.cli, worker.reaper; assert 'torch' not in sys.modules"

RUN useradd --system --uid 10001 --home-dir /app twossp && mkdir -p /data && chown twossp /data
USER twossp
ENV TWOSSP_DATA_DIR=/data \
    PYTHONPATH=/app

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"

CMD ["python", "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", "8000"]
