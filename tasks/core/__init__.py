"""What every stage shares: settings, status vocabulary, URIs, OUT/ layout, cache keys, errors, stats."""
