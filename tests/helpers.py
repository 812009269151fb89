"""Running flows in tests and reading back what the Prefect API recorded."""

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from flows.embed import embed_and_filter
from flows.ingest import ingest_crawl
from flows.runner import task_runner
from tasks.config import IngestSettings
from tasks.world import tiny_clip


def run(dask_address, out, **settings):
    """ingest_crawl on the session's cluster; returns the flow run's final state."""
    flow = ingest_crawl.with_options(task_runner=task_runner(dask_address))
    return flow(out=str(out), settings=IngestSettings(**settings), return_state=True)


def embed(dask_address, out, **overrides):
    """embed_and_filter with the world's tiny CLIP model on the session's cluster; the final state."""
    flow = embed_and_filter.with_options(task_runner=task_runner(dask_address))
    return flow(images=str(out / "images"), out=str(out), settings=tiny_clip.embed_settings(**overrides),
                return_state=True)


def task_states(state) -> dict[str, str]:
    """{task run name: state name} of one flow run, from the API."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.ID_DESC, limit=200)
    return {r.name: r.state.name for r in runs}
