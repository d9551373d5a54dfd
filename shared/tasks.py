"""Celery task names shared between the services that send tasks and those that run them,
so senders never import the workers' code (the trainer does not import Selenium, the control
service does not import torch)."""
from shared.redis_keys import GPU_QUEUE

CRAWL_TASK = "crawler.crawl"
RUN_JOB_TASK = "trainer.run_job"


def send_job(celery, job_id: str, nnodes: int) -> None:
    """Queues a job for the runners: one ``trainer.run_job`` task per node (kwarg ``node_rank``);
    node 0 keeps the record, the others join its rendezvous. ``celery``: any Celery app (only
    its ``send_task`` is used, so this module imports no Celery)."""
    for node_rank in range(nnodes):
        celery.send_task(RUN_JOB_TASK, args=[job_id], kwargs={"node_rank": node_rank}, queue=GPU_QUEUE)
