"""Wires an online learner from a run's options: the image source of its mode, the leakage
guard over the gallery being scored, the image transform of its model, where to report."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from services.trainer.data.transforms import image_transform
from services.trainer.data.lmdb_read import LmdbSplit
from services.trainer.online.active import chooser_from
from services.trainer.online.leakage import LeakageGuard
from services.trainer.online.budget import StepBudget
from services.trainer.online.learner import Levers, OnlineLearner
from services.trainer.online.replay import ReplayPairs
from services.trainer.online.interleave import TrainingTimeSteps
from services.trainer.online.sources import CacheSource, make_source
from services.trainer.tokenizer import tokenize
from services.trainer.engine.distributed import DistEnv
from services.trainer.engine.step import StepRunner
from shared import layout
from shared.image_cache import ImageCache
from shared.options import PredictOptions, TrainOptions, crawl_share, replay_ratio
from shared.settings import common_settings

log = logging.getLogger("cnclip.online")

# A crawl request is worth answering for this long: a pass that waits on login or on a slow
# site still collects what was asked for early (the result also goes to the cache).
REQUEST_TTL_S = 3 * 3600


def crawl_identity(job_id: str | None, name: str | None) -> str:
    """Who the crawl requests come from: the job's id, or for a run started by hand one of its
    own. Request ids derive from it (with the split, query and pass), and the crawler answers a
    request id once, so two hand-started runs of one name must not share it."""
    return job_id or f"{name or 'run'}-{os.getpid()}-{time.time_ns()}"


def build_learner(options: TrainOptions | PredictOptions, env: DistEnv, runner: StepRunner, resolution: int, emit: Callable[..., None], *,
                  gallery: str | None, job_id: str, online_steps: int = 0,
                  image_index: Callable[[int], int] = lambda pass_index: 0,
                  trace: Callable[[dict], None] | None = None, replay_data: str | None = None,
                  start_step: int = 0, schedule: Callable[[int], float] | None = None) -> OnlineLearner:
    """``options``: the run's options (its OnlineOptions, with the seed and context length);
    ``replay_data`` is the LMDB split whose pairs are replayed and whose texts measure a query's
    novelty for active crawling (training: its training split; test time: online_replay_data),
    ``start_step`` the training step the run starts at and ``schedule`` the training schedule's
    rate at a step (None: test time)."""
    guard = None
    if options.online_dedupe_gallery and gallery:
        guard = LeakageGuard.from_lmdb(gallery)
        log.info("leakage guard: %d gallery images from %s", len(guard), gallery)
    cache_dir = Path(options.online_cache_dir or common_settings().data_root / layout.ONLINE_CACHE)
    source = make_source(options.online, cache_dir=cache_dir, job_id=job_id, rank=env.rank,
                         n_images=options.online_images, window=options.online_window,
                         wait_s=options.online_wait_s,
                         redis_url=common_settings().redis_url if options.online == "live" else None,
                         request_ttl_s=REQUEST_TTL_S, guard=guard)
    replay = None
    test_time = schedule is None
    replay_per_pair = replay_ratio(options.online_replay, test_time=test_time)
    if replay_data and replay_per_pair > 0:
        replay = ReplayPairs(replay_data, resolution, options.context_length, options.seed, env.rank)
    crawl = None
    if options.online == "live":  # from the cache nothing is asked of a crawler
        share = crawl_share(options.online_crawl_share, test_time=test_time)
        crawl = chooser_from(share, lambda: LmdbSplit(replay_data).texts(),
                             lambda split, query: query in ImageCache(cache_dir, split), replay_data)
    during_training = during_training_source = None
    if not test_time and options.online_schedule == "training":
        context_length = options.context_length
        during_training = TrainingTimeSteps(
            options.online_step_ratio, options.valid_batch_size,
            lambda texts: tokenize(texts, context_length), start_step)
        # Read from the cache only: the live source's prefetch fills it from the job's start.
        during_training_source = CacheSource(cache_dir, options.online_images, guard, read_ahead=0)
    levers = Levers(budget=StepBudget(options.online_step_ratio, start_step, schedule=schedule,
                                      test_steps=options.online_batch_steps),
                    cycle_images=options.online_cycle_images, keep_images=options.online_keep_images,
                    agreement_neighbours=options.online_agreement_neighbours,
                    replay=replay, replay_ratio=replay_per_pair, crawl=crawl,
                    during_training=during_training, during_training_source=during_training_source)
    return OnlineLearner(source=source, runner=runner, env=env, transform=image_transform(resolution),
                         emit=emit, seed=options.seed, images_per_query=options.online_images,
                         login_timeout_s=options.online_login_timeout_s, image_index=image_index,
                         online_steps=online_steps, trace=trace, lr=options.online_lr, levers=levers)
