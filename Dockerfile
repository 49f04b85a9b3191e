# syntax=docker/dockerfile:1

# Build stage: install the bot and its dependencies into a self-contained venv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The dependencies come from pyproject.toml alone, in a layer of their own: a code
# change rebuilds only the small layer below, not this one.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

# Runtime stage: no compilers, no build files, a non-root user.
FROM python:3.11-slim
RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --home-dir /app --shell /usr/sbin/nologin bot \
    && mkdir -p /data /app \
    && chown bot:bot /data /app \
    && chmod 700 /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
# The running bot touches DATA_DIR/heartbeat; a stale file means a stuck event loop.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot", "health"]
# SIGTERM (docker stop) lets jobs finish for SHUTDOWN_GRACE seconds: give the
# container more than that (compose.yaml: stop_grace_period, docker stop -t).
CMD ["python", "-m", "bot"]
