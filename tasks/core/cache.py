"""What the Prefect task wrappers share: cache keys and the retry condition."""

from __future__ import annotations

import hashlib
import json
import logging

from clipcrawl.tasks import __version__
from clipcrawl.tasks.core.errors import InputError, is_transient

# Settings that say how long to wait, not what to make: raising one after a timeout keeps the finished work cached.
NOT_IN_KEY = {"shard_timeout", "file_timeout"}


def cache_key(*parts) -> str:
    """A persistent cache key over the task's inputs, settings and the code version."""
    blob = json.dumps(
        [__version__, *parts], sort_keys=True, default=lambda o: o.model_dump(mode="json", exclude=NOT_IN_KEY)
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _ThreadTimeoutNotice(logging.Filter):
    """Drops Prefect's notice, logged on every run of a sync task with a timeout in a worker thread, that
    the timeout cannot interrupt a blocking call. Known and accepted here: the sync tasks (extract, embed)
    block only for one read or one batch at a time, and the timeout stops them at the next one (tested
    with a file that drips forever). The download task, which waits on the network, is async."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            "Timeout of %s seconds configured for this task, but the task is running in a worker thread"
        )


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())


class _InputErrorTraceback(logging.Filter):
    """Keeps Prefect's record of a run that failed on wrong input, without the traceback: the error's one line
    says what was wrong with which input, and a traceback would bury it (it is the user's input, not a bug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_InputErrorTraceback())


def retry_transient(task, task_run, state) -> bool:
    """Retry a failed task run only when its error may not happen again (network, overload)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's own exception, classified
        return is_transient(exc)
    return False


def transient_retries(retries: int = 2) -> dict:
    """Task options that retry a failed run, with backoff and jitter, only when its error is transient."""
    from prefect.tasks import exponential_backoff  # prefect only where a task wrapper is made

    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=10),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_transient,
    }
