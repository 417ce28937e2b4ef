#!/bin/sh
# Each job holds a lease for as long as it runs; SIGTERM reaches this script only once
# the sidecar is idle (see Dockerfile.app).
set -eu
while true; do
    ecs-protection busy -- sh -c 'echo "job started"; sleep 20; echo "job done"'
done
