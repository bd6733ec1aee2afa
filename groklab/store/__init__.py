"""The database layer: the only code in groklab that knows SQL, shared by the api and the worker."""
