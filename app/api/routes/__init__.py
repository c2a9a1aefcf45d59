"""One module per resource: runs, stream (SSE), datasets, presets, health."""
