#!/bin/sh
# A job loop for `ecs-protection run` (see Dockerfile.app). Each job holds a lease while
# it runs. On SIGTERM the wrapper makes the sidecar drain: the next `ecs-protection busy`
# exits 75 instead of starting a job, which ends the loop. SIGTERM itself reaches this
# script only once no lease is held, and the trap lets the command in progress finish.
set -u
trap 'exit 0' TERM
while :; do
    status=0
    ecs-protection busy -- sh -c 'echo "job started"; sleep 20; echo "job done"' || status=$?
    case "$status" in
        0) ;;
        75) exit 0 ;;  # the task is stopping: start nothing new
        2 | 69 | 76 | 77) exit "$status" ;;  # misconfigured, or no sidecar: do not spin
        *) sleep 1 ;;  # the job failed: carry on, without a tight loop
    esac
done
