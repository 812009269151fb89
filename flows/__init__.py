"""clipcrawl's Prefect flows: wiring, parameters, task runners, artifacts."""
