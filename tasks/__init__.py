"""clipcrawl's work: plain Python that knows nothing of Prefect, plus thin @task wrappers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clipcrawl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+source"
