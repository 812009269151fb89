"""clipcrawl's work: plain Python that knows nothing of Prefect, plus thin @task wrappers."""


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed metadata at first use (importlib.metadata costs ~30 ms to import)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("clipcrawl")
    except PackageNotFoundError:  # running from a source tree that was not installed
        found = "0+source"
    globals()["__version__"] = found
    return found
