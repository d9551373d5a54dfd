"""`python -m services.trainer.runner`: the job runner as a Celery worker on queue ``gpu``,
one job at a time (solo pool: the job's torchrun launcher is a child of the worker itself, so
it dies with it; see process.py)."""
from __future__ import annotations

import argparse
import sys

from shared.redis_keys import GPU_QUEUE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="runner@%h", help="Celery node name")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    from services.trainer.runner.celery_app import app

    app.worker_main(["worker", "-Q", GPU_QUEUE, "--pool", "solo", "--concurrency", "1",
                     "-n", args.name, "--loglevel", args.loglevel,
                     "--without-gossip", "--without-mingle"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
