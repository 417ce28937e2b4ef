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
COPY pyproject.toml README.pypi.md LICENSE ./
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON}
ARG EXTRAS=""
ARG VERSION=0.2.0
LABEL org.opencontainers.image.title="ecs-protection-sidecar" \
      org.opencontainers.image.description="Keeps an Amazon ECS task's scale-in protection on while the app is busy; drains on SIGTERM." \
      org.opencontainers.image.source="https://github.com/ecs-protection/ecs-protection" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sidecar
# Only wheels cross over from the build stage: no compilers or sources in this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels \
        "ecs-protection-sidecar${EXTRAS:+[$EXTRAS]}==${VERSION}"
USER 10001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "sidecar.healthcheck"]
ENTRYPOINT ["ecs-protection-sidecar"]
