# komorebi-worker image: Python 3.11, the worker's runtime dependencies, and an ffmpeg built
# from Debian bookworm's ffmpeg source with only what the merge uses (no GPU, X, SDL or the
# dozens of codec libraries Debian's package links: ~30 MB instead of ~690 MB, and far fewer
# decoders exposed to untrusted recordings).
# Build: `make image` (IMAGE_TAG defaults to the commit). Runs as uid 10001 with a read-only
# root filesystem; /scratch is the only writable path (SCRATCH_DIR), a volume in production.
# `make image-test` builds and runs it here with podman (docs/deploy.md).

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
# pip and setuptools only install: the running worker never needs them.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# --- ffmpeg: Debian's ffmpeg 5.1 source (the version the tests run), a small build ----------
FROM python:3.11.14-slim-bookworm AS ffmpeg
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Not pinned to a Debian revision on purpose: the security archive keeps only the newest
# build, so a pin breaks every rebuild after a security update; the base image tag pins the
# release, a rebuild picks up the fixes. Sources come from the same archives as the packages
# (deb822 or one-line lists, whichever the base has), so a mirror-only build host works too.
# hadolint ignore=DL3008
RUN sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/*.sources 2>/dev/null; \
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/source.list \
        2>/dev/null; \
    apt-get update \
    && apt-get install -y --no-install-recommends dpkg-dev gcc libc6-dev make nasm pkg-config \
        xz-utils libopus-dev libdav1d-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The newest bookworm (or bookworm-security) source, with Debian's patches applied.
RUN apt-get update \
    && apt-get source --download-only --only-source ffmpeg \
    && dpkg-source --no-check -x ffmpeg_*.dsc /src/ffmpeg \
    && rm -rf /var/lib/apt/lists/* ffmpeg_*
WORKDIR /src/ffmpeg
# Every filter, muxer (but ASF's, which need its demuxer), parser and bitstream filter (the
# merge's graph, chapters, loudness, raw PCM for analysis); readers only for what browsers and
# Amazon Connect write (the worker's demuxer allow-list is mov/mp4, matroska/webm, wav);
# encoders for the outputs (AAC, Opus, PNG, PCM). Files and pipes only: no network protocols,
# no devices but lavfi.
RUN ./configure --prefix=/opt/ffmpeg --enable-shared --disable-static --enable-rpath \
        --disable-autodetect --enable-pthreads --enable-zlib --enable-libopus --enable-libdav1d \
        --disable-debug --disable-doc --disable-ffplay --disable-network --disable-everything \
        --enable-filters --enable-muxers --disable-muxer=asf,asf_stream --enable-parsers --enable-bsfs \
        --enable-protocol=file,pipe --enable-indev=lavfi \
        --enable-demuxer='mov,matroska,wav,ogg,flac,mp3,aac,ffmetadata,image2,png_pipe,pcm_*' \
        --enable-decoder='h264,hevc,vp8,vp9,libdav1d,opus,aac,aac_latm,vorbis,flac,mp3*,png,rawvideo,pcm_*' \
        --enable-encoder='aac,libopus,opus,flac,png,rawvideo,wrapped_avframe,pcm_*' \
    && make -j"$(nproc)" \
    && make install \
    && mkdir -p /out/bin /out/lib \
    && cp /opt/ffmpeg/bin/ffmpeg /opt/ffmpeg/bin/ffprobe /out/bin/ \
    && cp -P /opt/ffmpeg/lib/*.so.* /out/lib/ \
    && strip --strip-unneeded /out/bin/* /out/lib/*.so.*.*

# --- runtime ------------------------------------------------------------------------------
# Same base as the build stage: the venv's interpreter path must exist here.
FROM python:3.11.14-slim-bookworm
# The two codec libraries the ffmpeg build links (Opus encoding, AV1 decoding), from Debian.
# apt's package caches go too (~80 MB; official Debian images already skip them).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus0 libdav1d6 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --system --gid 10001 komorebi \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /scratch \
        --shell /usr/sbin/nologin komorebi \
    && mkdir -p /scratch \
    && chown 10001:10001 /scratch \
    && chmod 0700 /scratch
COPY --from=ffmpeg /out /opt/ffmpeg
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/opt/ffmpeg/bin:$PATH \
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
