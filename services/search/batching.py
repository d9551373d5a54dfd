"""Text queries that arrive together are encoded together.

Under concurrent clients most of a query's time is the text tower, and a batch of 32 queries
costs the tower little more than one: one thread takes whatever queries are waiting (up to
``max_batch``), encodes them per index in one pass and searches FAISS with them as one matrix.
It is also the only thread that runs the text tower, so torch's own threads are never
oversubscribed by many requests at once. A lone query waits for nothing: the thread starts on
it as soon as it arrives.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any


class TextBatcher:
    def __init__(self, max_batch: int = 32):
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="text-batcher", daemon=True)
        self._thread.start()

    def submit(self, loaded, text: str, k: int) -> Future:
        """A future of ``[(image_id, score), ...]``: the top ``k`` of ``loaded`` for ``text``."""
        future: Future = Future()
        self._queue.put((loaded, text, k, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            groups: dict[int, list[tuple[Any, str, int, Future]]] = {}
            for item in batch:
                groups.setdefault(id(item[0]), []).append(item)
            for items in groups.values():
                self._answer(items)

    @staticmethod
    def _answer(items: list[tuple[Any, str, int, Future]]) -> None:
        loaded = items[0][0]
        try:
            feats = loaded.encode_texts([text for _, text, _, _ in items])
            hits = loaded.search(feats, max(k for _, _, k, _ in items))
        except Exception as exc:  # each waiting request gets the failure, the thread goes on
            for *_, future in items:
                future.set_exception(exc)
            return
        for (_, _, k, future), found in zip(items, hits):
            future.set_result(found[:k])
