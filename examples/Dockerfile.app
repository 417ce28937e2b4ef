# An app image whose worker cannot handle SIGTERM itself (a shell script here):
# `ecs-protection run` is PID 1, reaps zombies, forwards signals; on SIGTERM it makes
# the sidecar drain and holds SIGTERM back while a lease is held (--hold-timeout).
FROM python:3.12.8-slim-bookworm
RUN pip install --no-cache-dir "ecs-protection==0.2.0"
COPY worker.sh /app/worker.sh
ENTRYPOINT ["ecs-protection", "run", "--"]
CMD ["/app/worker.sh"]
