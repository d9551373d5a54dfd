"""One result picture: download, check, resize. Whatever goes wrong with it (a refused host,
a redirect loop, a decoding error, an OSError deep in a codec) becomes that picture's reason,
never the whole request's failure.

Decoding is the memory-hungry step (a picture is held in full before it is shrunk), so it runs
on ``max_parallel_decodes`` threads of its own however many downloads are in flight: a worker's
peak memory is that of one large picture, not of one per download thread. One thread also
means one malloc arena, whose freed memory the next picture reuses and which is handed back
to the system after each picture (glibc keeps it otherwise, and the worker would grow with
every download thread that ever decoded one).
"""
from __future__ import annotations

import ctypes
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from services.crawler.download import DownloadError, ImageDownloader
from shared.image_validation import ImageRules, InvalidImage, prepare_image

log = logging.getLogger(__name__)


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return None


_TRIM = _malloc_trim()


class PictureFetcher:
    def __init__(self, downloader: ImageDownloader, rules: ImageRules, max_parallel_decodes: int = 1):
        self.downloader = downloader
        self.rules = rules
        self._decoder = ThreadPoolExecutor(max_parallel_decodes, thread_name_prefix="decode")

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def _decode(self, data: bytes) -> bytes:
        try:
            return prepare_image(data, self.rules)
        finally:
            if _TRIM is not None:
                _TRIM(0)  # about a millisecond; a decode takes tens

    def fetch(self, url: str, referer: str | None, deadline: float) -> tuple[bytes | None, str]:
        """(JPEG bytes, "") or (None, reason)."""
        if time.time() > deadline:
            return None, "deadline passed before the download"
        try:
            data = self.downloader.fetch(url, referer=referer, deadline=deadline)
        except DownloadError as exc:
            return None, f"download failed: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - one picture must not fail the request
            log.exception("download of %s failed unexpectedly", url)
            return None, f"download failed: {type(exc).__name__}: {exc}"[:300]
        try:
            return self._decoder.submit(self._decode, data).result(), ""
        except InvalidImage as exc:
            return None, f"invalid image: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - e.g. OSError or MemoryError from a codec
            log.exception("decoding of %s failed unexpectedly", url)
            return None, f"invalid image: {type(exc).__name__}: {exc}"[:300]
        finally:
            del data
