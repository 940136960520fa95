# Duo routing sidecar image. Build: docker build -t duo-sidecar .   (tested by `make image-test`, see image/README.md)
#
# BASE_IMAGE must be a Debian-like image with python3 (>= 3.11) and its venv module on PATH, a /bin/sh and
# useradd; the default is the official Python image. The builder and the runtime stage use the same base, so
# the wheels built in one run in the other.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# Index overrides for mirrors (consumed by pip in this stage only; never put credentials in build arguments).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /src/
COPY sidecar /src/sidecar
COPY clients/python /src/clients/python
# The project's wheel, then a wheelhouse with it and every dependency; binary wheels only, so no compiler is needed.
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret (it stays out of every layer):
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt .
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python3 -m venv /opt/build-venv \
    && /opt/build-venv/bin/pip wheel --no-deps --wheel-dir /wheels /src \
    && /opt/build-venv/bin/pip wheel --only-binary=:all: --wheel-dir /wheels /wheels/duo_routing_sidecar-*.whl

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="duo-routing-sidecar" \
      org.opencontainers.image.description="gRPC sidecar that routes GitLab Duo requests to the right AI model" \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid 10001 duo \
    && useradd --system --uid 10001 --gid duo --home-dir /var/lib/duo-sidecar --no-create-home \
        --shell /usr/sbin/nologin duo \
    && install -d -o duo -g duo -m 0750 /var/lib/duo-sidecar \
    && install -d -m 0755 /etc/duo-sidecar

# Only the wheelhouse crosses over (bind-mounted, so it adds no layer): the venv holds the sidecar and its
# pinned dependencies, nothing from the source tree. pip and setuptools go too; nothing installs at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/duo-sidecar \
    && /opt/duo-sidecar/bin/pip install --no-index --find-links=/wheels --no-cache-dir \
        --disable-pip-version-check duo-routing-sidecar \
    && /opt/duo-sidecar/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

# All defaults: mount your own TOML over this file (or its directory) to configure the sidecar.
COPY image/config.toml /etc/duo-sidecar/config.toml

# Environment variables override the config file, so these win over server.listen, metrics.listen and
# storage.path in a mounted file: change them with -e. Listening on every interface is what a container needs.
ENV PATH=/opt/duo-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DUO_SIDECAR_SERVER_LISTEN=0.0.0.0:50051 \
    DUO_SIDECAR_METRICS_LISTEN=0.0.0.0:9236 \
    DUO_SIDECAR_STORAGE_PATH=/var/lib/duo-sidecar/sidecar.db

# The SQLite database, its token key (created on first start, mode 0600) and the cached model catalog.
VOLUME ["/var/lib/duo-sidecar"]
WORKDIR /var/lib/duo-sidecar
USER 10001:10001
# gRPC; Prometheus metrics.
EXPOSE 50051 9236

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["duo-sidecar", "healthcheck", "--config", "/etc/duo-sidecar/config.toml", "--timeout", "4"]

# SIGTERM (the default stop signal): health NOT_SERVING for server.drain_delay_seconds (5 s), then in-flight calls
# get server.grace_period_seconds (10 s): give `docker stop` / terminationGracePeriodSeconds more (20 s).
ENTRYPOINT ["duo-sidecar"]
CMD ["serve", "--config", "/etc/duo-sidecar/config.toml"]
