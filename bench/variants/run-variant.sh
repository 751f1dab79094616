#!/bin/sh
# run-variant.sh APP LOGLEVEL: the batch instance's worker (its worker-batch.env options) on the
# `default` queue, as bench/decompose.py's transient unit. BENCH_DROP=limits,maxtasks removes
# the time limits and the child recycling from its options.
set -eu
opts=$CELERY_WORKER_OPTS
case ",${BENCH_DROP:-}," in
*,limits,*) opts=$(echo "$opts" | sed -E 's/--(soft-)?time-limit=[0-9.]+//g') ;;
esac
case ",${BENCH_DROP:-}," in
*,maxtasks,*) opts=$(echo "$opts" | sed -E 's/--max-(tasks|memory)-per-child=[0-9]+//g') ;;
esac
# shellcheck disable=SC2086 # the options are words
exec /opt/celery/current/bin/celery --app="$1" worker --hostname="bench@$(hostname)" \
    --queues=default --logfile=/var/log/celery/bench.log $opts --loglevel="$2"
