# komorebi-worker image: Python 3.11 + Debian's ffmpeg, runtime dependencies only.
# Build: `make image` (IMAGE_TAG defaults to the commit). Runs as uid 10001 with a read-only
# root filesystem; /scratch is the only writable path (SCRATCH_DIR), a volume in production.

# --- build: a virtualenv with the locked runtime dependencies and the worker package ---------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# The runtime lock (no test/lint tools); every dependency has a manylinux wheel, so no
# compiler is needed. --no-deps: exactly the locked set, nothing resolved at build time.
COPY requirements-runtime.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# --- runtime ------------------------------------------------------------------------------
# Same base as the build stage: the venv's interpreter path must exist here.
FROM python:3.11.14-slim-bookworm
# ffmpeg/ffprobe from Debian bookworm. Not pinned to a Debian revision on purpose: the
# security archive keeps only the newest build, so a pin breaks every rebuild after a
# security update; the base image tag pins the release, a rebuild picks up the fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 komorebi \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /scratch \
        --shell /usr/sbin/nologin komorebi \
    && mkdir -p /scratch \
    && chown 10001:10001 /scratch \
    && chmod 0700 /scratch
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/scratch \
    TMPDIR=/scratch \
    SCRATCH_DIR=/scratch \
    METRICS_PORT=9657 \
    LOG_FORMAT=json
# Declared after the chown: Docker and Fargate bind mounts copy this ownership to the volume,
# so the non-root worker can write its scratch files.
VOLUME ["/scratch"]
WORKDIR /scratch
USER 10001:10001
EXPOSE 9657
# No curl in the image: Python's urllib; a non-2xx /healthz raises and exits 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('METRICS_PORT', '9657') + '/healthz', timeout=4)"]
ENTRYPOINT ["komorebi-worker"]
CMD ["run"]
