# syntax=docker/dockerfile:1
# The ecs-protection sidecar image. Build: docker build -t ecs-protection-sidecar .
FROM python:3.12.8-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[api]"

FROM python:3.12.8-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sidecar
# Only wheels cross over from the build stage: no compilers or sources in this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "ecs-protection-sidecar[api]==0.1.0"
USER 10001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "sidecar.healthcheck"]
ENTRYPOINT ["ecs-protection-sidecar"]
