"""Command line of the crawler.

    python -m services.crawler worker [--loglevel INFO] [--name NAME]
        a Celery worker on queue "crawl": prefork pool, one process, one browser
    python -m services.crawler export-failures --output FILE [--job JOB_ID]
        the failure stream as a tab-separated text file (time, job, split, query, url, reason)
    python -m services.crawler check-profile [NAME_OR_PATH] [--against URL [--base-url URL]]
        loads a site profile and prints it, or says what is wrong with it; with --against,
        opens URL in a browser and reports which of the profile's selectors match there

Settings come from the environment (CNCLIP_CRAWLER_*, see services/crawler/settings.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shared.redis_keys import CRAWL_QUEUE


def default_worker_name() -> str:
    return f"crawler-{os.getpid()}@%h"


def _worker(args: argparse.Namespace) -> int:
    from services.crawler.celery_app import app

    argv = ["worker", "-Q", CRAWL_QUEUE, "-P", "prefork", "-c", "1", "-n", args.name,
            "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


def _export(args: argparse.Namespace) -> int:
    import redis

    from services.crawler.results import export_failures, write_failures
    from services.crawler.settings import CrawlerSettings

    client = redis.Redis.from_url(args.redis_url or CrawlerSettings().redis_url)
    if args.output == "-":
        count = write_failures(client, sys.stdout, args.job)
    else:
        count = export_failures(client, Path(args.output), args.job)
    print(f"{count} failures written", file=sys.stderr)
    return 0


def _check_profile(args: argparse.Namespace) -> int:
    from services.crawler.profile import ProfileError, load_profile
    from services.crawler.settings import CrawlerSettings

    name = args.profile or CrawlerSettings().profile
    try:
        profile = load_profile(name, args.base_url)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.against:
        print(json.dumps(profile.model_dump(), indent=2, ensure_ascii=False))
        return 0
    from services.crawler.profile_check import check_against

    if not args.against.startswith(("http://", "https://")):
        print(f"error: --against needs an http(s) URL, not {args.against!r}", file=sys.stderr)
        return 2
    # A dry run needs no display: headless unless a remote browser is configured.
    settings = CrawlerSettings()
    if settings.browser_mode == "xvfb":
        settings = settings.model_copy(update={"browser_mode": "headless"})
    report = check_against(profile, args.against, settings, wait_s=args.wait)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.crawler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a crawler worker")
    worker.add_argument("--loglevel", default="INFO")
    # Celery expands only %h, %n and %d in a worker name; the process id keeps two workers on
    # one host (a Procfile, a container running several) apart.
    worker.add_argument("--name", default=default_worker_name(),
                        help="Celery node name (default: crawler-<pid>@%%h)")
    worker.set_defaults(func=_worker)
    export = sub.add_parser("export-failures", help="write the failure stream to a text file")
    export.add_argument("--output", required=True, help="file path, or - for stdout")
    export.add_argument("--job", default=None, help="only this job's failures")
    export.add_argument("--redis-url", default=None)
    export.set_defaults(func=_export)
    check = sub.add_parser("check-profile", help="validate a site profile")
    check.add_argument("profile", nargs="?", default=None)
    check.add_argument("--against", metavar="URL", default=None,
                       help="open this page and report which selectors match (nothing is clicked)")
    check.add_argument("--base-url", default=None,
                       help="run the profile against a stand-in of the site (as CNCLIP_CRAWLER_BASE_URL)")
    check.add_argument("--wait", type=float, default=None,
                       help="seconds to wait for late results (default: the profile's results.grace_s)")
    check.set_defaults(func=_check_profile)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
