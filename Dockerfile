# syntax=docker/dockerfile:1
# Build stage: resolve and install the pinned dependencies into a virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY app ./app
COPY core ./core
COPY tables ./tables
COPY agents ./agents
RUN pip install --no-cache-dir --upgrade pip && pip install --no-cache-dir .

# Runtime stage: the virtualenv, the config, an unprivileged user and a writable data dir.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 storestream \
    && mkdir -p /data && chown storestream:storestream /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/storestream
COPY faust.ini ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    APP_DATADIR=/data \
    WEB_BIND=0.0.0.0 \
    WEB_PORT=6066
USER storestream
VOLUME ["/data"]
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('WEB_PORT', '6066') + '/health')"
CMD ["faust", "-A", "app", "worker", "-l", "info"]
