"""Celery job runner: turns a queued job into a torchrun run of the trainer CLI and reports
its events and state into Redis. Torch is never imported here; it runs in the children."""
