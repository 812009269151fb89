#!/usr/bin/env bash
# Start a clipcrawl cluster on this machine, each part its own process: a Prefect server (SQLite, or PostgreSQL
# with PREFECT_DATABASE=postgres), a Dask scheduler, CPU workers, one GPU-tagged worker (--resources GPU=1:
# CUDA when present, else the CPU) and a Prefect worker polling the process pool. Stop it with
# infra/local/down.sh.
#
#   bash infra/local/up.sh && eval "$(bash infra/local/up.sh --env)"
#
# CLIPCRAWL_LOCAL   state folder: pids, logs, the Prefect database (default ./.clipcrawl-local)
# CLIPCRAWL_HOST    address the Prefect server listens on (default 127.0.0.1). Any other address needs
#                   PREFECT_AUTH_STRING (user:password): the server then refuses requests without it.
#                   Dask listens on 127.0.0.1 only: a scheduler runs whatever its clients send, without
#                   authentication (a cluster across machines: infra/docker-compose.yml, infra/kubernetes/).
# PREFECT_PORT (4200), DASK_PORT (8786), DASK_DASHBOARD_PORT (8787), CPU_WORKERS (cores - 1, at least 1),
# CLIPCRAWL_WORK_POOL (clipcrawl-process), PYTHON (python3 of the environment clipcrawl is installed in)
# PREFECT_DATABASE  sqlite (default: a file in the state folder) or postgres: a PostgreSQL cluster of its own in
#                   $CLIPCRAWL_LOCAL/postgres (Debian's postgresql package; run as the user postgres when up.sh
#                   runs as root, which PostgreSQL refuses), on 127.0.0.1:POSTGRES_PORT (5432), the database and
#                   superuser prefect with a password generated once (kept in postgres/password), as docker-compose runs it
set -euo pipefail
state="$(realpath -m "${CLIPCRAWL_LOCAL:-.clipcrawl-local}")"
host="${CLIPCRAWL_HOST:-127.0.0.1}"
prefect_port="${PREFECT_PORT:-4200}"
dask_port="${DASK_PORT:-8786}"
cores="$(nproc)"
cpu_workers="${CPU_WORKERS:-$(( cores > 1 ? cores - 1 : 1 ))}"
pool="${CLIPCRAWL_WORK_POOL:-clipcrawl-process}"
python="${PYTHON:-python3}"
api="http://$host:$prefect_port/api"
scheduler="tcp://127.0.0.1:$dask_port"
home="$(cd "$(dirname "$0")/../.." && pwd)"  # flow runs start here (deployments/prefect.yaml)

if [[ "${1:-}" == "--env" ]]; then  # what a shell needs to use the cluster
  echo "export PREFECT_API_URL=$api CLIPCRAWL_DASK_ADDRESS=$scheduler${PREFECT_AUTH_STRING:+ PREFECT_API_AUTH_STRING=$PREFECT_AUTH_STRING}"
  exit 0
fi
if [[ "$host" != "127.0.0.1" && "$host" != "localhost" && -z "${PREFECT_AUTH_STRING:-}" ]]; then
  echo "up.sh: the Prefect server would listen on $host: set PREFECT_AUTH_STRING (user:password) so it requires it" >&2
  exit 2
fi
mkdir -p "$state/pids" "$state/logs" "$state/prefect"
export PREFECT_HOME="$state/prefect" PREFECT_API_URL="$api" PREFECT_SERVER_ANALYTICS_ENABLED=false
if [[ -n "${PREFECT_AUTH_STRING:-}" ]]; then
  export PREFECT_SERVER_API_AUTH_STRING="$PREFECT_AUTH_STRING" PREFECT_API_AUTH_STRING="$PREFECT_AUTH_STRING"
fi

start() {  # NAME COMMAND...: a process group of its own, logged, its pid recorded. With RESTART=1 it is
  # started again whenever it exits, as compose's and Kubernetes' restart policies do: a worker the
  # scheduler lost (e.g. after a long stall) shuts down, and its tasks go to the one that replaces it.
  local name="$1"; shift
  if [[ -f "$state/pids/$name.pid" ]] && kill -0 "$(cat "$state/pids/$name.pid")" 2>/dev/null; then
    echo "up.sh: $name is already running (pid $(cat "$state/pids/$name.pid"))"
    return
  fi
  : >"$state/logs/$name.log"
  if [[ "${RESTART:-0}" == 1 ]]; then
    setsid bash -c 'while true; do "$@"; echo "up.sh: exited with status $?, starting again in 2 s" >&2; sleep 2; done' \
      "$name" "$@" >>"$state/logs/$name.log" 2>&1 < /dev/null &
  else
    setsid "$@" >>"$state/logs/$name.log" 2>&1 < /dev/null &
  fi
  echo $! >"$state/pids/$name.pid"
}

wait_for() {  # NAME SECONDS CHECK...: until CHECK succeeds, or fail with the log's tail
  local name="$1" seconds="$2"; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return; fi
    if ! kill -0 "$(cat "$state/pids/$name.pid")" 2>/dev/null; then break; fi
    sleep 1
  done
  echo "up.sh: $name did not come up; the end of $state/logs/$name.log:" >&2
  tail -20 "$state/logs/$name.log" >&2
  exit 1
}

start_postgres() {  # a cluster in $state/postgres; exports the server's PREFECT_API_DATABASE_CONNECTION_URL
  local bin="" dir="$state/postgres" port="${POSTGRES_PORT:-5432}" as_owner=() candidate
  for candidate in "$(pg_config --bindir 2>/dev/null)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [[ -x "$candidate/initdb" ]]; then bin="$candidate"; break; fi
  done
  if [[ -z "$bin" ]]; then
    echo "up.sh: PREFECT_DATABASE=postgres needs PostgreSQL's server (Debian: apt-get install postgresql)" >&2
    exit 2
  fi
  if [[ "$(id -u)" == 0 ]]; then  # PostgreSQL refuses to run as root: the package's user postgres runs it
    as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    if ! "${as_owner[@]}" test -x "$state"; then
      echo "up.sh: the user postgres cannot reach $state: choose a CLIPCRAWL_LOCAL it can enter" >&2
      exit 2
    fi
  fi
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    mkdir -p "$dir" && chmod 700 "$dir"
    [[ ${#as_owner[@]} == 0 ]] || chown postgres:postgres "$dir"
    (umask 077 && "$python" -c "import secrets; print(secrets.token_hex(16))" >"$dir/password")
    [[ ${#as_owner[@]} == 0 ]] || chown postgres:postgres "$dir/password"
    "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U prefect --pwfile="$dir/password" --auth-local=scram-sha-256 \
      --auth-host=scram-sha-256 -E UTF8 >"$state/logs/postgres-initdb.log" 2>&1 \
      || { echo "up.sh: initdb failed; the end of $state/logs/postgres-initdb.log:" >&2; tail -20 "$state/logs/postgres-initdb.log" >&2; exit 1; }
  fi
  local password; password="$(cat "$dir/password")"
  if ! { [[ -f "$state/pids/postgres.pid" ]] && kill -0 "$(cat "$state/pids/postgres.pid")" 2>/dev/null; } \
    && "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then  # another server (Debian's own cluster: 5432) answers there
    echo "up.sh: port $port already has a PostgreSQL server; set POSTGRES_PORT to a free port" >&2
    exit 2
  fi
  # TCP on 127.0.0.1 only (no socket: its path in a deep CLIPCRAWL_LOCAL could pass the 107-byte limit); without
  # the Prefect auth string in its environment
  start postgres env -u PREFECT_SERVER_API_AUTH_STRING -u PREFECT_API_AUTH_STRING "${as_owner[@]}" "$bin/postgres" \
    -D "$dir/data" -c listen_addresses=127.0.0.1 -c port="$port" -c unix_socket_directories=''
  export PGPASSWORD="$password"
  wait_for postgres 60 "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U prefect -d postgres
  if [[ "$("$bin/psql" -X -h 127.0.0.1 -p "$port" -U prefect -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'prefect'")" != 1 ]]; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U prefect prefect
  fi
  unset PGPASSWORD
  export PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$password@127.0.0.1:$port/prefect"
}

if [[ "${PREFECT_DATABASE:-sqlite}" == postgres ]]; then
  start_postgres
elif [[ "${PREFECT_DATABASE:-sqlite}" != sqlite ]]; then
  echo "up.sh: PREFECT_DATABASE is sqlite or postgres, not ${PREFECT_DATABASE}" >&2
  exit 2
fi

# the first start creates the database: ~40 s on 2 cores
start prefect-server "$python" -m prefect server start --host "$host" --port "$prefect_port"
unset PREFECT_API_DATABASE_CONNECTION_URL  # the server's alone: no other process gets the password
wait_for prefect-server 180 "$python" -c "import sys, urllib.request as u; r = u.Request('$api/health');
import os, base64; a = os.environ.get('PREFECT_API_AUTH_STRING')
a and r.add_header('Authorization', 'Basic ' + base64.b64encode(a.encode()).decode()); u.urlopen(r, timeout=5)"

start dask-scheduler "$python" -m dask scheduler --host 127.0.0.1 --port "$dask_port" \
  --dashboard-address "127.0.0.1:${DASK_DASHBOARD_PORT:-8787}"
wait_for dask-scheduler 60 "$python" -c "import socket; socket.create_connection(('127.0.0.1', $dask_port), 5)"

# glibc's adaptive malloc, not the nanny's MALLOC_TRIM_THRESHOLD_ (which maps and unmaps every image anew)
export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'
RESTART=1 start dask-cpu-workers "$python" -m dask worker "$scheduler" --name cpu --nworkers "$cpu_workers" --nthreads 1 \
  --resources CPU=1 --no-dashboard --host 127.0.0.1
# the GPU worker's model falls back to the CPU without a GPU, and should then use the cores as a GPU would
# (Dask sets OMP_NUM_THREADS=1 in worker processes unless its pre-spawn environment says otherwise)
DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{\"OMP_NUM_THREADS\": $cores}" RESTART=1 start dask-gpu-worker "$python" -m dask worker "$scheduler" --name gpu-0 --nthreads 1 \
  --resources GPU=1 --preload clipcrawl.tasks.embed.clip_model --no-dashboard --host 127.0.0.1
wait_for dask-gpu-worker 120 "$python" -c "
from distributed import Client
with Client('$scheduler', timeout=5) as c:
    assert len(c.scheduler_info()['workers']) >= $cpu_workers + 1"

"$python" -m prefect work-pool inspect "$pool" >/dev/null 2>&1 || "$python" -m prefect work-pool create "$pool" --type process >/dev/null
CLIPCRAWL_DASK_ADDRESS="$scheduler" CLIPCRAWL_HOME="$home" RESTART=1 start prefect-worker "$python" -m prefect worker start --pool "$pool" \
  --name "local-$(hostname)"
wait_for prefect-worker 60 grep -q "started" "$state/logs/prefect-worker.log"

echo "clipcrawl cluster up: Prefect UI http://$host:$prefect_port, Dask dashboard http://127.0.0.1:${DASK_DASHBOARD_PORT:-8787}"
echo "  $cpu_workers CPU worker(s), 1 GPU-tagged worker, a Prefect worker on pool $pool; logs in $state/logs"
echo "use it from a shell: export PREFECT_API_URL=$api CLIPCRAWL_DASK_ADDRESS=$scheduler"
