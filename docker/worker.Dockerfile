# Worker image: CUDA PyTorch + the pruning library + the Celery worker.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t twossp-worker .
# The base image ships torch built for CUDA 12.4; the host needs an NVIDIA driver and the NVIDIA
# container toolkit (compose reserves the GPU). Without a GPU the same image runs jobs on the CPU.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface

WORKDIR /app

COPY docker/requirements-api.txt /tmp/requirements-api.txt
COPY docker/requirements-worker.txt /tmp/requirements-worker.txt
# torch comes from the base image; keep pip from replacing it with a CPU build
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /tmp/torch-constraint.txt \
 && pip install -c /tmp/torch-constraint.txt -r /tmp/requirements-api.txt -r /tmp/requirements-worker.txt

COPY twossp_core/ /app/twossp_core/
COPY service/ /app/service/
COPY worker/ /app/worker/
COPY migrations/ /app/migrations/
COPY alembic.ini /app/alembic.ini

RUN useradd --system --uid 10001 --home-dir /app twossp \
 && mkdir -p /data /cache/huggingface && chown twossp /data /cache/huggingface
USER twossp
ENV TWOSSP_DATA_DIR=/data \
    PYTHONPATH=/app

# One job per process on the GPU: concurrency 1, prefetch 1, a fresh pool child per job (torch and CUDA
# are only ever imported in that child, never in the parent). The queue is TWOSSP_WORKER_QUEUE (default twossp):
# the worker's class, which it advertises with its memory so the API routes jobs that fit it there.
CMD ["celery", "-A", "worker.celery_app", "worker", "--pool", "prefork", "--concurrency", "1", \
     "--prefetch-multiplier", "1", "--max-tasks-per-child", "1", "--loglevel", "INFO"]
