"""Celery worker: trains queued runs with the engine and writes their metrics to the database."""
