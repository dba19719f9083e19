# Python 3.11, pinned by tag and digest; the Python packages by requirements.lock (docs/operations.md, "Reproducible builds").
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
RUN useradd --create-home --uid 10001 cds
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY service ./service
COPY cards ./cards
COPY fixtures ./fixtures
COPY deploy ./deploy
RUN pip install --no-cache-dir -c requirements.lock "./[smart]" && mkdir /data && chown 10001 /data
USER 10001
ENV CDS_FEEDBACK_DB_URL=sqlite:////data/feedback.db \
    CDS_REPLAY_STORE_URL=sqlite:////data/replay.db \
    CDS_SMART_STATE_STORE_URL=sqlite:////data/smart-launch.db \
    PROMETHEUS_MULTIPROC_DIR=/tmp/alp-cds-metrics
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["alp-cds", "serve", "--bind", "0.0.0.0:8080", "--workers", "2"]
