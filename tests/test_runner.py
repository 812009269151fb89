"""The runner's submission and gathering: Prefect's settings serialized once for all the tasks a stage submits, and
each finished future let go, so that the Dask scheduler does not hold every task of a crawl until the stage ends."""

from __future__ import annotations

import time

import dask.base
from prefect import flow, task
from prefect.context import FlowRunContext, SettingsContext, hydrated_context, serialize_context

from clipcrawl.flows import runner
from clipcrawl.flows.runner import Finished, cpu_work, gather, task_runner, work


def test_submissions_share_one_serialization_of_the_settings_that_hydrates_to_them(prefect_api):
    settings = SettingsContext.get().settings
    outside = serialize_context()["settings_context"]
    with work("CPU"):
        first, second = (serialize_context()["settings_context"] for _ in range(2))
        assert first is second  # serialized once, not per submission
        assert dask.base.tokenize(first) == dask.base.tokenize(second)
    assert dict(first) == outside  # what every task got before, item for item
    assert serialize_context()["settings_context"] is not first  # only inside the block
    with hydrated_context({"settings_context": first}):  # as a Dask worker rebuilds it
        assert SettingsContext.get().settings == settings


@task
def square(x: int) -> int:
    return x * x


def held(client, keys: set) -> int:
    """How many of `keys` the scheduler still holds, once the releases it was sent have landed (up to 10 s)."""
    deadline = time.monotonic() + 10

    def count(dask_scheduler=None):
        return len(keys & set(dask_scheduler.tasks))

    while (n := client.run_on_scheduler(count)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def test_gather_lets_each_finished_future_go_and_keeps_its_task_run_and_state(dask_address):
    @flow(task_runner=task_runner(dask_address))
    def stage() -> tuple:
        with cpu_work():
            futures = {i: square.submit(i) for i in range(20)}
        keys = {f.wrapped_future.key for f in futures.values()}
        ids = {i: f.task_run_id for i, f in futures.items()}
        done, failed = gather(futures, "test")
        records = {i: (type(f), f.task_run_id, f.state.name) for i, f in futures.items()}
        return done, failed, records, ids, held(FlowRunContext.get().task_runner.client, keys)

    done, failed, records, ids, still_held = stage()
    assert done == {i: i * i for i in range(20)} and failed == {}
    assert records == {i: (Finished, ids[i], "Completed") for i in range(20)}
    assert still_held == 0  # the scheduler forgot every task (held futures would keep all 20)


def test_gather_submits_through_a_window_topped_up_as_tasks_finish(dask_address, monkeypatch):
    monkeypatch.setattr(runner, "_submit_window", lambda: 3)

    @flow(task_runner=task_runner(dask_address))
    def stage() -> tuple:
        units, out_at_submit = {}, []

        def submission(i: int):
            def submit():
                out_at_submit.append(sum(not callable(u) and not isinstance(u, Finished) for u in units.values()))
                return square.submit(i)

            return submit

        units.update({i: submission(i) for i in range(10)})
        done, failed = gather(units, "test")
        return done, failed, out_at_submit, {type(u) for u in units.values()}

    done, failed, out_at_submit, kinds = stage()
    assert done == {i: i * i for i in range(10)} and failed == {} and kinds == {Finished}
    assert len(out_at_submit) == 10 and out_at_submit[:3] == [0, 1, 2]
    assert max(out_at_submit) == 2  # never a 4th out while 3 were unfinished (all at once: 0, 1, ..., 9)


def test_a_stage_error_names_the_first_failures_and_counts_the_rest():
    few = {f"f{i}": "why" for i in range(3)}
    assert runner.failure_listing(few, "shard ") == "shard f0: why; shard f1: why; shard f2: why"
    many = {f"f{i:05d}": f"why {i}" for i in range(50_000)}
    text = runner.failure_listing(many)
    assert text.startswith("f00000: why 0; f00001: why 1;") and text.count(": why") == runner.FAILURES_LISTED
    assert text.endswith(f"; and {50_000 - runner.FAILURES_LISTED} more (each in the stage's _summary.json)")
