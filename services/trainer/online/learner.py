"""The online learner: training steps on (crawled image, query) pairs of the evaluation
queries, between training steps (``online_schedule training``, interleave.py) or before an
evaluation batch is embedded, on that batch's queries (validation passes, test time).

It implements the loop's ``OnlineHook`` (training and validation) and is driven directly by
test-time adaptation (prediction). It knows nothing of the mode: an image source
(sources.py) hands it each query's crawled images or the reason there are none.

- Crawl ahead: ``before_eval`` gives the source every query of the pass in order of use, so
  browsers work on later batches while the model steps on earlier ones.
- Missing is missing: a query without a usable image is left out of the step and counted by
  reason; nothing is replaced by a placeholder.
- Ranks stay in lock-step: every rank joins every step (DDP and the feature gather need all of
  them). Ranks pad to the longest rank's pair count with rows marked invalid, which take no
  part in the loss; a rank with no pairs contributes only padding. If no rank has a pair, all
  skip the step together.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from services.trainer.online.active import CrawlChooser
from services.trainer.online.agreement import agreeing
from services.trainer.online.budget import StepBudget
from services.trainer.online.interleave import TrainingTimeSteps
from services.trainer.online.replay import ReplayPairs
from services.trainer.online.sources import CacheSource, ImageSource
from services.trainer.online.types import Fetched
from services.trainer.engine.distributed import DistEnv
from services.trainer.engine.step import StepRunner, step_seed
from shared.image_cache import ImageCache
from shared.messages import EventPayload, OnlineBatch, OnlinePass, OnlineState

log = logging.getLogger("cnclip.online")

ONLINE_SEED_OFFSET = 1_000_000_007  # online steps draw dropout from a stream of their own


class OnlineLoginTimeout(RuntimeError):
    """Live mode: no crawler rank logged in before the login timeout."""


@dataclass
class PassTotals:
    queries: int = 0
    pairs: int = 0
    steps: int = 0
    dropped_leaked: int = 0
    dropped_disagreeing: int = 0
    replay_pairs: int = 0
    skipped_active: int = 0
    missing: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Levers:
    """What decides how much and from what the learner learns (OnlineOptions' levers, built
    by the factory): the step budget, which queries are crawled, picture order and filter, replay."""

    budget: StepBudget = field(default_factory=lambda: StepBudget(None))
    cycle_images: bool = False  # each use of a query takes its next kept picture
    keep_images: int | None = None  # the pictures that agree most with the query's others
    agreement_neighbours: int | None = None  # agreement with the N most similar others; None: all
    replay: ReplayPairs | None = None
    replay_ratio: float = 0.0  # offline pairs per crawled pair in a step
    crawl: CrawlChooser | None = None  # active crawling; None: every query is crawled
    # online_schedule training: the steps are taken between training steps (interleave.py), on
    # pictures read from the cache by ``during_training_source``; validation passes only measure.
    during_training: TrainingTimeSteps | None = None
    during_training_source: CacheSource | None = None


class OnlineLearner:
    def __init__(self, *, source: ImageSource, runner: StepRunner, env: DistEnv, transform: Callable,
                 emit: Callable[..., None], seed: int, images_per_query: int,
                 login_timeout_s: float, image_index: Callable[[int], int] = lambda pass_index: 0,
                 online_steps: int = 0, trace: Callable[[dict], None] | None = None,
                 lr: float | None = None, levers: Levers | None = None):
        self.source = source
        self.runner = runner  # the engine's step unit (shared with the training loop)
        self.env = env
        self.transform = transform
        self.emit = emit
        self.seed = seed
        self.images_per_query = images_per_query
        self.login_timeout_s = login_timeout_s
        self.image_index = image_index
        self.online_steps = online_steps  # counted over the run, stored in checkpoints
        self.trace = trace  # per-rank audit of every online batch (--trace-batches)
        self.lr = lr  # None: the optimizer's current rate (the training schedule's)
        self.levers = levers or Levers()
        self.pass_index = 0
        self.epoch: int | None = None
        self.train_step: int | None = None  # the training step of the current pass (None at test time)
        self._totals: PassTotals | None = None
        self._login_checked = False
        self._uses: Counter = Counter()  # how often each query has been learnt from (picture cycling)
        self._kept: dict[str, list[int]] = {}  # this pass's agreeing pictures of each query
        self._crawled: set[str] | None = None  # this pass's queries to learn from (active crawling)
        self._walk: tuple[PassTotals | None, dict[str, list[int]]] = (None, {})  # the training-time walk's
        self._pass_learns = False  # whether the open validation pass takes online steps

    # ---- the OnlineHook seam ---------------------------------------------------------------
    def prefetch(self, split: str, texts: Sequence[str]) -> None:
        chosen = self._choose(split, texts)
        self.source.prefetch(split, chosen)
        if self.levers.during_training is not None:
            self.levers.during_training.plan(split, chosen)

    def after_train_step(self, train_step: int, epoch: int) -> None:
        """``online_schedule training``: the online steps the training steps up to ``train_step``
        have earned, each on the next batch of validation queries with pictures in the cache."""
        plan = self.levers.during_training
        if plan is None or not plan.planned:
            return
        self.train_step, self.epoch = train_step, epoch
        for _ in range(plan.earn(train_step)):
            with self._walk_state():
                stepped = self._walk_step(plan)
            if not stepped:
                break  # no rank had a pair: the step stays owed (every rank sees the same)
            plan.spent()

    def _walk_step(self, plan: TrainingTimeSteps) -> bool:
        """One online step of the walk over the validation queries; whether any rank had a pair."""
        cache = ImageCache(self.levers.during_training_source.cache_dir, plan.split)
        while True:
            whole_walk = plan.starts_walk
            if whole_walk:
                self._kept = {}  # a new walk: its pictures' agreement is measured again, by the model as it is
            if self._totals is None:
                self._open_walk_pass(plan.split)
            batch = plan.next_batch(cache.__contains__)
            if batch.not_ready:
                self._totals.missing["not_cached"] += batch.not_ready
                self._totals.queries += batch.not_ready
            if batch.texts or whole_walk or not plan.ends_walk:
                break
            # The walk's tail had nothing in the cache: the step goes on with the next walk's
            # first batch (a step is owed only when no query at all has pictures).
            self._close_walk_pass(plan.split)
        if batch.texts:
            loss = self.learn(plan.split, batch.index, batch.texts, batch.input_ids, batch.attention_mask,
                              steps=1, source=self.levers.during_training_source)
        else:  # nothing of this rank's in the cache yet: join the step's collectives only
            loss = self._step([], batch.input_ids, batch.attention_mask)
        if plan.ends_walk:
            self._close_walk_pass(plan.split)
        return loss is not None

    @contextlib.contextmanager
    def _walk_state(self) -> Iterator[None]:
        """The walk's own totals and kept pictures, apart from a validation pass's."""
        saved = self._totals, self._kept
        self._totals, self._kept = self._walk
        try:
            yield
        finally:
            self._walk = self._totals, self._kept
            self._totals, self._kept = saved

    # A training-time pass (its events) is the walk's learning up to the walk's end or the next
    # validation, whichever comes first; the walk itself goes on across validations.
    def _open_walk_pass(self, split: str) -> None:
        self._totals = PassTotals()
        self.levers.during_training_source.start_pass(split, self.levers.during_training.texts, self.pass_index)

    def _close_walk_pass(self, split: str) -> None:
        counters = self.levers.during_training_source.end_pass()
        if self._totals is not None and not self._totals.pairs:
            self._totals = None  # nothing was in the cache yet: not a pass
            return
        self._report_pass(split, counters)

    def before_eval(self, split: str, texts: Sequence[str], *, epoch: int | None = None,
                    train_step: int | None = None, batches: int | None = None) -> None:
        self._wait_for_login()
        if epoch is not None:
            self.epoch = epoch
        self.train_step = train_step
        plan = self.levers.during_training
        if plan is None:
            self.levers.budget.start_pass(train_step, batches)
        else:
            with self._walk_state():
                if self._totals is not None:
                    self._close_walk_pass(plan.split)
            # The steps were taken during training; those still owed (their queries' pictures
            # were not in the cache yet) are taken here, where a batch waits for its pictures.
            owed = plan.take_owed()
            self._pass_learns = bool(owed)
            if not owed:
                return
            self.levers.budget.spread(owed, batches)
        self._pass_learns = True
        self._totals = PassTotals()
        self._kept = {}
        self._crawled = None
        texts = self._choose(split, texts)
        self.source.start_pass(split, texts, self.pass_index)

    def _choose(self, split: str, texts: Sequence[str]) -> Sequence[str]:
        """The queries to ask the source for, in order of use (all of them without active crawling)."""
        if self.levers.crawl is None:
            return texts
        self._crawled, _ = self.levers.crawl.choose(split, texts)
        return [text for text in texts if text in self._crawled]

    def on_eval_batch(self, split: str, batch_index: int, batch: Any) -> None:
        if self._pass_learns:
            self.learn(split, batch_index, batch.texts, batch.input_ids, batch.attention_mask)

    def after_eval(self, split: str) -> None:
        if self._pass_learns:
            self._pass_learns = False
            self._report_pass(split, self.source.end_pass())

    def _report_pass(self, split: str, counters: dict) -> None:
        totals = self._totals or PassTotals()
        self._send(OnlinePass(split=split, epoch=self.epoch, pass_index=self.pass_index,
                              queries=totals.queries, pairs=totals.pairs, steps=totals.steps,
                              missing=dict(totals.missing), dropped_leaked=totals.dropped_leaked,
                              dropped_disagreeing=totals.dropped_disagreeing, replay_pairs=totals.replay_pairs,
                              skipped_active=totals.skipped_active, cache_hits=counters.get("cache_hits", 0),
                              source=counters,
                              wall_s=round(time.perf_counter() - totals.started, 3), online_step=self.online_steps))
        log.info("online pass %d (%s): %d queries, %d pairs, %d steps, missing %s, %d disagreeing dropped",
                 self.pass_index, split, totals.queries, totals.pairs, totals.steps, dict(totals.missing),
                 totals.dropped_disagreeing)
        self.pass_index += 1
        self._totals = None

    # ---- one batch --------------------------------------------------------------------------
    def learn(self, split: str, batch_index: int, texts: Sequence[str], input_ids: torch.Tensor,
              attention_mask: torch.Tensor, *, steps: int | None = None,
              source: ImageSource | None = None) -> float | None:
        """The online steps the budget gives this batch (``steps`` when given), on its queries'
        crawled pictures from ``source`` (default: the learner's); returns the last step's loss,
        or None when no step was taken (no budget, or no rank had a pair)."""
        source = source or self.source
        started = time.perf_counter()
        first_row: dict[str, int] = {}
        for row, text in enumerate(texts):
            first_row.setdefault(text, row)  # a query paired with several images counts once
        # Active crawling left the others uncrawled: neither asked for nor learnt from.
        crawled = [t for t in first_row if self._crawled is None or t in self._crawled]
        skipped = len(first_row) - len(crawled)
        fetched = source.take(crawled)
        wait_ms = round((time.perf_counter() - started) * 1000, 1)
        n_steps = self.levers.budget.steps_for_batch() if steps is None else steps
        missing, leaked, disagreeing = Counter(), 0, 0
        pictures: dict[str, list[tuple[torch.Tensor, bytes]]] = {}
        for text in crawled:
            got = fetched.get(text) or Fetched(text, reason="failed")
            leaked += got.dropped_leaked
            usable = self._pictures(got) if n_steps else [(None, b"")] * len(got.images)
            if not usable:
                missing[got.reason or "failed"] += 1
                continue
            pictures[text] = usable
        if n_steps and self.levers.keep_images is not None:
            disagreeing = self._keep_agreeing(pictures)
        used = hashlib.sha256()  # which (query, picture) pairs this batch learnt from, in order
        loss, stepped, replayed, index = None, 0, 0, None
        for _ in range(n_steps):
            rows, images = [], []
            for text, row in first_row.items():
                if text not in pictures:
                    continue
                index = self._picture_index(text)
                picture, data = pictures[text][index % len(pictures[text])]
                self._uses[text] += 1
                rows.append(row)
                images.append(picture)
                used.update(text.encode() + b"\0" + hashlib.sha256(data).digest())
            replay = self.levers.replay.draw(round(self.levers.replay_ratio * len(rows))) \
                if self.levers.replay is not None and rows else None
            step_loss = self._step(images, input_ids[rows] if rows else input_ids[:0],
                                   attention_mask[rows] if rows else attention_mask[:0], replay)
            if step_loss is None:
                break  # no rank had a pair: none will have one in a further step either
            loss, stepped = step_loss, stepped + 1
            replayed += 0 if replay is None else replay[0].shape[0]
        totals = self._totals
        if totals is not None:
            totals.queries += len(first_row)
            totals.pairs += len(pictures)
            totals.dropped_leaked += leaked
            totals.dropped_disagreeing += disagreeing
            totals.replay_pairs += replayed
            totals.skipped_active += skipped
            totals.missing.update(missing)
            totals.steps += stepped
        if self.trace is not None:
            self.trace({"step": self.train_step, "online_split": split, "pass_index": self.pass_index, "batch": batch_index,
                        "rank": self.env.rank, "pairs": len(pictures), "stepped": stepped > 0,
                        "steps": stepped, "online_step": self.online_steps})
        self._send(OnlineBatch(split=split, batch=batch_index, pass_index=self.pass_index,
                               queries=len(first_row), pairs=len(pictures), missing=dict(missing),
                               dropped_leaked=leaked, dropped_disagreeing=disagreeing, replay_pairs=replayed,
                               skipped_active=skipped, steps=stepped, wait_ms=wait_ms, loss=loss,
                               online_step=self.online_steps,
                               image_index=None if self.levers.cycle_images else self.image_index(self.pass_index),
                               pairs_sha256=used.hexdigest()[:16]))
        return loss

    def _picture_index(self, text: str) -> int:
        if self.levers.cycle_images:
            return self._uses[text]
        return self.image_index(self.pass_index)

    def _pictures(self, fetched: Fetched) -> list[tuple[torch.Tensor, bytes]]:
        """The query's crawled images that decode, ready for the model, with their bytes, in
        crawl order (this pass's agreeing subset once it is known)."""
        out = []
        for data in fetched.images:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    out.append((self.transform(image.convert("RGB")), data))
            except (OSError, ValueError) as exc:  # validated already; a decoder may still refuse
                log.warning("crawled image of %r could not be decoded: %s", fetched.query, exc)
        if not out and fetched.images:
            fetched.reason = "failed"
        kept = self._kept.get(fetched.query)
        if kept is not None:
            out = [out[i] for i in kept if i < len(out)]
        return out

    @torch.no_grad()
    def _keep_agreeing(self, pictures: dict[str, list[tuple[torch.Tensor, bytes]]]) -> int:
        """Narrows each query's pictures (first seen this pass) to those that agree most with
        the others; returns how many were dropped."""
        keep = self.levers.keep_images
        fresh = [t for t, p in pictures.items() if t not in self._kept and len(p) > keep]
        for text in pictures:
            if text not in fresh:
                self._kept.setdefault(text, list(range(len(pictures[text]))))
        if not fresh:
            return 0
        features = self.runner.embed_images(torch.stack([p for t in fresh for p, _ in pictures[t]]))
        dropped, start = 0, 0
        for text in fresh:
            n = len(pictures[text])
            kept = agreeing(features[start:start + n], keep, self.levers.agreement_neighbours)
            start += n
            self._kept[text] = kept
            pictures[text] = [pictures[text][i] for i in kept]
            dropped += n - len(kept)
        return dropped

    def _step(self, images: list[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor,
              replay: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> float | None:
        env = self.env
        pixels = torch.stack(images) if images else torch.zeros((0, *self._image_shape()))
        if replay is not None:
            pixels = torch.cat([pixels, replay[0].to(pixels.dtype)])
            input_ids = torch.cat([input_ids, replay[1].to(input_ids.dtype)])
            attention_mask = torch.cat([attention_mask, replay[2].to(attention_mask.dtype)])
        rows = pixels.shape[0]
        counts = env.all_gather_objects(rows)
        longest, total = max(counts), sum(counts)
        if total == 0:
            return None  # nobody has a pair: every rank skips together
        pad = longest - rows
        if pad:
            pixels = torch.cat([pixels, torch.zeros((pad, *pixels.shape[1:]), dtype=pixels.dtype)])
            filler_ids = torch.zeros((pad, input_ids.shape[1]), dtype=input_ids.dtype)
            filler_ids[:, 0], filler_ids[:, 1] = 101, 102  # [CLS] [SEP]: a well-formed empty text
            filler_mask = torch.zeros_like(filler_ids)
            filler_mask[:, :2] = 1
            input_ids = torch.cat([input_ids, filler_ids])
            attention_mask = torch.cat([attention_mask, filler_mask])
        # Masks only when ranks differ, decided from the counts every rank has, so all ranks
        # take the same collective path.
        valid = None
        if len(set(counts)) > 1:
            valid = torch.zeros(longest, dtype=torch.bool)
            valid[:rows] = True
        torch.manual_seed(step_seed(self.seed, ONLINE_SEED_OFFSET + self.online_steps, env.rank))
        chunk = self.runner.to_device(pixels, input_ids, attention_mask, valid)
        # online_lr when given; else, in training, the rate the budget's steps were earned at.
        rate = self.lr if self.lr is not None else self.levers.budget.rate
        with _learning_rate(self.runner.optimizer, rate):
            result = self.runner([chunk])
        self.online_steps += 1
        return result.loss

    def _image_shape(self) -> tuple[int, int, int]:
        probe = self.transform(Image.new("RGB", (8, 8)))
        return tuple(probe.shape)

    # ---- live mode: someone must have scanned a QR code --------------------------------------
    def _wait_for_login(self) -> None:
        if self._login_checked:
            return

        def waiting(ranks: list[int]) -> None:
            self._send(OnlineState(state="waiting_for_login", ranks=ranks, timeout_s=self.login_timeout_s,
                                   message="no crawler rank is logged in: scan a QR code at /login"))
            log.warning("waiting up to %.0fs for a crawler rank to log in (scan a QR code at /login)",
                        self.login_timeout_s)

        ok = self.source.wait_for_login(self.login_timeout_s, waiting) if self.env.is_main else True
        ok = self.env.broadcast_object(ok)
        if not ok:
            raise OnlineLoginTimeout(
                f"waiting_for_login: no crawler rank logged in within {self.login_timeout_s:.0f}s; "
                "scan a QR code at /login and run the job again")
        self._send(OnlineState(state="logged_in"))
        self._login_checked = True

    def _send(self, payload: EventPayload) -> None:
        """Reports ``payload``: its model checks the fields here, where they are made."""
        self.emit(payload.type, **payload.model_dump(exclude_unset=True))

    def close(self) -> None:
        self.source.close()
        if self.levers.during_training_source is not None:
            self.levers.during_training_source.close()


@contextlib.contextmanager
def _learning_rate(optimizer: torch.optim.Optimizer, lr: float | None) -> Iterator[None]:
    """Steps at ``lr`` (when given), then gives the training schedule its rates back."""
    if lr is None:
        yield
        return
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = lr
    try:
        yield
    finally:
        for group, rate in zip(optimizer.param_groups, scheduled):
            group["lr"] = rate
