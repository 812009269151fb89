"""Takedowns: remove samples from every output of a run, log them, and keep them out of later runs."""
