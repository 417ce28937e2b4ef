#!/bin/sh
# A job loop for `ecs-protection run` (see Dockerfile.app). Each job holds a lease while
# it runs; its ack (with a real queue: deleting the message) comes after the lease. On
# SIGTERM the wrapper makes the sidecar drain: the next `ecs-protection busy` exits 75
# instead of starting a job, which ends the loop. SIGTERM itself reaches this script only
# once no lease is held, which can be just before the ack: the trap only notes it, so
# the ack still runs and the loop ends after it. JOB_SECONDS: the stand-in job's length.
set -u
stopping=0
trap 'stopping=1' TERM
while [ "$stopping" = 0 ]; do
    status=0
    ecs-protection busy -- sh -c 'echo "job started"; sleep "$1"; echo "job done"' \
        job "${JOB_SECONDS:-20}" || status=$?
    case "$status" in
        0) echo "job acked" ;;  # stand-in for the ack, e.g. SQS delete_message
        75) exit 0 ;;  # the task is stopping: start nothing new
        2 | 69 | 76 | 77) exit "$status" ;;  # misconfigured, or no sidecar: do not spin
        *) sleep 1 ;;  # the job failed: carry on, without a tight loop
    esac
done
