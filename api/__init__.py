"""The FastAPI service: thin HTTP routes over the store and the queue."""
