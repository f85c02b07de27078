# The exchange server image: Python 3.11 slim, the compiled engine, no build or dev
# tools, a non-root user. `docker compose up` runs it with PostgreSQL (docker-compose.yml;
# docs/operations.md). tests/test_docker_files.py checks this file's wiring.

# --- build: dependencies into /opt/venv, the engine compiled with mypyc into /app/build
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md markets.example.json ./
COPY app ./app
COPY engine ./engine
COPY exchange_client ./exchange_client
COPY migrations ./migrations
# the server's dependencies and the package itself (editable: it runs from /app)
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -e .
# mypy (mypyc) goes into the build stage's own Python only, never into /opt/venv
RUN pip install --no-cache-dir mypy \
 && python -c "import sys; from app import native; sys.exit(native.build())" \
 && rm -rf /app/build/native.tmp-*

# --- runtime: the venv and the source tree, nothing else
FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin exchange \
 && mkdir /data \
 && chown exchange /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EXCHANGE_HOST=0.0.0.0 \
    EXCHANGE_PORT=8000 \
    EXCHANGE_DATA_DIR=/data \
    EXCHANGE_LOG_FORMAT=json \
    EXCHANGE_ENGINE=native
WORKDIR /app
USER exchange
EXPOSE 8000
VOLUME ["/data"]
# ready when recovery is over and the database answers (503 before: docs/operations.md)
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=2)"]
CMD ["exchange", "serve"]
