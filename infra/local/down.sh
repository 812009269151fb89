#!/usr/bin/env bash
# Stop what infra/local/up.sh started, newest first: SIGTERM to each process group (a service, its
# restart loop and its children; SIGINT to PostgreSQL, its fast shutdown, after the Prefect server is gone),
# SIGKILL to whatever of the group is left after 30 s.
set -uo pipefail
state="$(realpath -m "${CLIPCRAWL_LOCAL:-.clipcrawl-local}")"
# a service's process group, and its children in groups of their own (PostgreSQL's backends call setsid)
alive() { pgrep -g "$1" >/dev/null 2>&1 || pgrep -P "$1" >/dev/null 2>&1; }
for name in prefect-worker dask-gpu-worker dask-cpu-workers dask-scheduler prefect-server postgres; do
  file="$state/pids/$name.pid"
  [[ -f "$file" ]] || continue
  group="$(cat "$file")"  # up.sh starts each service with setsid: its pid is its process group
  if alive "$group"; then
    signal=TERM; [[ "$name" == postgres ]] && signal=INT
    kill "-$signal" -- "-$group" 2>/dev/null
    for _ in $(seq 60); do alive "$group" || break; sleep 0.5; done
    if alive "$group"; then
      echo "down.sh: $name did not stop in 30 s: killing it" >&2
      pkill -KILL -P "$group" 2>/dev/null
      kill -KILL -- "-$group" 2>/dev/null
      for _ in $(seq 20); do alive "$group" || break; sleep 0.5; done
    fi
    echo "stopped $name"
  fi
  rm -f "$file"
done
