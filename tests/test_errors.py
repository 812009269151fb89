import errno

from clipcrawl.tasks.core.errors import is_transient


class HTTPError(Exception):
    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.status = status


def test_network_and_overload_errors_are_transient():
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.ECONNREFUSED, "refused"))
    assert is_transient(HTTPError(503))
    assert is_transient(HTTPError(429))
    assert is_transient(OSError("503 Slow Down"))
    try:
        raise ValueError("wrapped") from ConnectionResetError()
    except ValueError as exc:
        assert is_transient(exc)


def test_bad_data_and_missing_files_are_not_transient():
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(HTTPError(404))
    assert not is_transient(ValueError("not a WARC file"))
