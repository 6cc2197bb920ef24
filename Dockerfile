# One image for every histo runtime: the gRPC search service, the web page, the Celery GPU worker
# and the CLI.
# Configuration comes only from HISTO_* environment variables (see histo/settings.py).
#
#   docker build -t histo:0.1.0 .
#
# PyPI's Linux torch wheels bundle the CUDA runtime, so the same image runs on a GPU host
# (docker compose grants the worker a GPU) and on CPUs. `pip install .` brings every dependency the
# search service, the page and the worker import (prometheus-client included); the extras are
# not needed at run time (bench: FAISS for benchmarks; dev: tests and linters).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HISTO_HOME=/var/lib/histo

WORKDIR /app
COPY pyproject.toml README.md ./
COPY histo ./histo
COPY cli ./cli
COPY services ./services
COPY workers ./workers
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/histo histo \
    && mkdir -p /var/lib/histo/snapshots \
    && chown -R histo:histo /var/lib/histo

USER histo
# gRPC, the page (and its /metrics), the search service's and a worker's metrics
EXPOSE 50051 8080 9464 9465
CMD ["histocli", "--help"]
