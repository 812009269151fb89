#!/usr/bin/env bash
# Register clipcrawl's deployments (deployments/prefect.yaml) on the Prefect server at $PREFECT_API_URL:
# the work pool, the concurrency limits, then `prefect deploy --all`. Safe to run again (it updates).
#
#   CLIPCRAWL_OUT=s3://bucket/clipcrawl bash deployments/deploy.sh
#
# CLIPCRAWL_WORK_POOL    clipcrawl-process (default: a process pool, one machine) or clipcrawl-kubernetes
#                        (created by the Prefect worker's Helm chart, infra/kubernetes/)
# CLIPCRAWL_INGEST_CRON  scheduled ingestion (default "0 4 * * *": daily at 04:00 UTC)
# CLIPCRAWL_CC_SLOTS     task runs reading Common Crawl at once, over all flow runs (default 16)
# CLIPCRAWL_GPU_SLOTS    embedding task runs at once, over all flow runs: the GPUs of the cluster (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://127.0.0.1:4200/api}"
: "${CLIPCRAWL_OUT:?set CLIPCRAWL_OUT to the shared output location, e.g. s3://bucket/clipcrawl}"
export CLIPCRAWL_WORK_POOL="${CLIPCRAWL_WORK_POOL:-clipcrawl-process}"
export CLIPCRAWL_INGEST_CRON="${CLIPCRAWL_INGEST_CRON:-0 4 * * *}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
prefect="${PREFECT:-prefect}"

if ! $prefect work-pool inspect "$CLIPCRAWL_WORK_POOL" >/dev/null 2>&1; then
  case "$CLIPCRAWL_WORK_POOL" in
    *kubernetes*) echo "work pool $CLIPCRAWL_WORK_POOL does not exist: start its worker first (infra/kubernetes/)" >&2
                  exit 1 ;;
    *) $prefect work-pool create "$CLIPCRAWL_WORK_POOL" --type process ;;
  esac
fi

# tag-based limits (created, or updated in place): extract tasks reading Common Crawl carry the tag
# commoncrawl, embedding tasks the tag gpu
$prefect concurrency-limit create commoncrawl "${CLIPCRAWL_CC_SLOTS:-16}" >/dev/null
$prefect concurrency-limit create gpu "${CLIPCRAWL_GPU_SLOTS:-1}" >/dev/null

$prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
