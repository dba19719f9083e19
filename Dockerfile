FROM python:3.11-slim
RUN useradd --create-home --uid 10001 cds
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY cards ./cards
COPY fixtures ./fixtures
COPY deploy ./deploy
RUN pip install --no-cache-dir "./[smart]" && mkdir /data && chown 10001 /data
USER 10001
ENV CDS_FEEDBACK_DB_URL=sqlite:////data/feedback.db \
    CDS_REPLAY_STORE_URL=sqlite:////data/replay.db \
    CDS_SMART_STATE_STORE_URL=sqlite:////data/smart-launch.db \
    PROMETHEUS_MULTIPROC_DIR=/tmp/alp-cds-metrics
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["alp-cds", "serve", "--bind", "0.0.0.0:8080", "--workers", "2"]
