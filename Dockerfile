# syntax=docker/dockerfile:1
# The ecs-protection sidecar image.
#   docker build -t ecs-protection-sidecar:0.2.0 .                        # agent backend
#   docker build --build-arg EXTRAS=api -t ecs-protection-sidecar:0.2.0-api .  # + api (boto3)
# The default image has no boto3/botocore (30+ MiB that only the api backend needs); the
# -api image also serves ECS agents older than 1.65.0 (TASK_PROTECTION_BACKEND=auto picks
# the api backend there).
ARG PYTHON=python:3.12.8-slim-bookworm

FROM ${PYTHON} AS build
ARG EXTRAS=""
WORKDIR /src
# The dependencies exactly as requirements/ pins them (scripts/lock, from pyproject.toml):
# the same versions in every build of a version, each file checked against its hash.
COPY requirements ./requirements
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
        -r "requirements/image${EXTRAS:+-$EXTRAS}.txt"
COPY pyproject.toml README.pypi.md LICENSE ./
COPY sidecar ./sidecar
# The project's own wheel has no published hash: built here, installed without dependencies.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheel . \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-deps /tmp/wheel/*.whl

FROM ${PYTHON}
ARG EXTRAS=""
ARG VERSION=0.2.0
LABEL org.opencontainers.image.title="ecs-protection-sidecar" \
      org.opencontainers.image.description="Keeps an Amazon ECS task's scale-in protection on while the app is busy; drains on SIGTERM." \
      org.opencontainers.image.source="https://github.com/ecs-protection/ecs-protection" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sidecar
# Only the installed packages cross over: no wheels, compilers or sources here. A
# COPY, not a RUN that bind-mounts the build stage: a layer's cache follows what is copied
# into it, but with buildah not what a RUN mounts from another stage (a stale layer
# shipped old code), and podman 4.3 fails that mount when the stage comes from its cache.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER 10001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "sidecar.healthcheck"]
# Every signal blocked until the sidecar's handlers are in (it unblocks the ones it
# handles): a SIGTERM while Python is still starting would be lost (PID 1 without a
# handler), with no drain; blocked, it waits and drains like a late one. Needs coreutils
# 8.31 or later (Debian bullseye on) for env --block-signal.
ENTRYPOINT ["env", "--block-signal", "ecs-protection-sidecar"]
