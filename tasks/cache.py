"""What the Prefect task wrappers share: cache keys and the retry condition."""

from __future__ import annotations

import hashlib
import json

from tasks import __version__
from tasks.errors import is_transient


def cache_key(*parts) -> str:
    """A persistent cache key over the task's inputs, settings and the code version."""
    blob = json.dumps([__version__, *parts], sort_keys=True, default=lambda o: o.model_dump(mode="json"))
    return hashlib.sha256(blob.encode()).hexdigest()


def retry_transient(task, task_run, state) -> bool:
    """Retry a failed task run only when its error may not happen again (network, overload)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's own exception, classified
        return is_transient(exc)
    return False
