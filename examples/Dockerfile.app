# An app image whose worker cannot handle SIGTERM itself (a shell script here):
# `ecs-protection run` is PID 1, reaps zombies, forwards signals; on SIGTERM it makes
# the sidecar drain and holds SIGTERM back while a lease is held (--hold-timeout).
FROM python:3.12.8-slim-bookworm
# The published client, pinned (hence no DL3013). The project's own tests build this image
# before a release with CLIENT=/context/<the client's wheel, put into the build context>.
ARG CLIENT="ecs-protection==0.2.0"
# hadolint ignore=DL3013
RUN --mount=type=bind,target=/context pip install --no-cache-dir "${CLIENT}"
COPY worker.sh /app/worker.sh
ENTRYPOINT ["ecs-protection", "run", "--"]
CMD ["/app/worker.sh"]
