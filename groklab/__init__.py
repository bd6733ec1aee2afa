"""groklab's shared core: settings, the database layer, the task queue and the `groklab` CLI."""
