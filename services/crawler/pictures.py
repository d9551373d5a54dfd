"""One result picture: download, check, resize. Whatever goes wrong with it (a refused host,
a redirect loop, a decoding error, an OSError deep in a codec) becomes that picture's reason,
never the whole request's failure.

Decoding is the memory-hungry step (a picture is held in full before it is shrunk), so only
``max_parallel_decodes`` run at once however many downloads are in flight: a worker's peak
memory is that of one large picture, not of one per download thread.
"""
from __future__ import annotations

import logging
import threading
import time

from services.crawler.download import DownloadError, ImageDownloader
from shared.image_validation import ImageRules, InvalidImage, prepare_image

log = logging.getLogger(__name__)


class PictureFetcher:
    def __init__(self, downloader: ImageDownloader, rules: ImageRules, max_parallel_decodes: int = 1):
        self.downloader = downloader
        self.rules = rules
        self._decoding = threading.BoundedSemaphore(max_parallel_decodes)

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
            with self._decoding:
                return prepare_image(data, self.rules), ""
        except InvalidImage as exc:
            return None, f"invalid image: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - e.g. OSError or MemoryError from a codec
            log.exception("decoding of %s failed unexpectedly", url)
            return None, f"invalid image: {type(exc).__name__}: {exc}"[:300]
        finally:
            del data
