"""Celery task names shared between the services that send tasks and those that run them,
so senders never import the workers' code (the trainer does not import Selenium, the control
service does not import torch)."""

CRAWL_TASK = "crawler.crawl"
RUN_JOB_TASK = "trainer.run_job"
