"""``cnclip jobs``: submit, list, show, follow, cancel, delete and wait for jobs of the control
service. Exit codes: 0 succeeded (or done), 1 failed, 2 bad input, 3 cancelled, 4 cannot reach
the service. ``--json`` on every command prints what the API answered, for scripts."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from services.client import spec as specs
from services.client.api import (BAD_INPUT, EXIT_BY_STATE, OK, TERMINAL, UNREACHABLE, Api, ClientError)
from services.client.config import resolve
from services.client.follow import Event, events
from services.client.render import Progress, summary
from shared.messages import JobEvent

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("\n", " ")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the control service (default: CNCLIP_CONTROL_URL, then the local stack)")
    common.add_argument("--token", help="its token (default: CNCLIP_CONTROL_TOKEN, then the local stack's)")
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("submit", parents=[common], help="submit a job (train, predict, ...) from a spec")
    p.add_argument("kind", help="the job kind: train, predict, or any other POST /jobs/<kind> of the API")
    p.add_argument("spec", nargs="?", help="YAML or JSON spec file, '-' for standard input")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set one option of the spec (repeatable; VALUE is read as YAML)")
    p.add_argument("--follow", "-f", action="store_true", help="follow the job to its end")
    _retry(p)

    p = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--kind", help="only jobs of this kind")
    p.add_argument("--limit", type=int, default=50)

    p = sub.add_parser("show", parents=[common], help="one job: state, progress, result, metrics")
    p.add_argument("id")

    p = sub.add_parser("logs", parents=[common], help="a job's events (the same as its event stream)")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true", help="keep following until the job ends")
    _retry(p)

    for action, text in (("cancel", "cancel a job"), ("delete", "delete a finished job's record and events")):
        p = sub.add_parser(action, parents=[common], help=text)
        p.add_argument("id")

    p = sub.add_parser("wait", parents=[common], help="wait for a job to end; the exit code says how it ended")
    p.add_argument("id")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 4)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    _retry(p)


def _retry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retry-s", type=float, default=120.0,
                   help="how long to keep reconnecting to an unreachable service while following")


def run(args: argparse.Namespace) -> int:
    try:
        api = Api(resolve(args.url, args.token))
    except ClientError as exc:
        return _fail(exc)
    try:
        return ACTIONS[args.action](api, args)
    except ClientError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    finally:
        api.close()


def _fail(exc: ClientError) -> int:
    print(f"cnclip jobs: {exc.message}", file=sys.stderr)
    return exc.code


def _print_json(value: Any) -> None:
    # One line per document: a followed job prints its events and then itself as JSON lines.
    print(json.dumps(value, ensure_ascii=False), flush=True)


# ---- actions --------------------------------------------------------------------------------
def submit(api: Api, args: argparse.Namespace) -> int:
    if args.spec is None and not args.sets:
        raise ClientError(BAD_INPUT, "give a spec file (or '-') and/or --set key=value")
    # The spec is read before the service is asked anything: a bad file is refused offline too.
    written = specs.load(args.spec) if args.spec is not None else {}
    sets = specs.parse_set(args.sets)
    kinds = api.kinds(api.schema())
    if args.kind not in kinds:
        raise ClientError(BAD_INPUT, f"unknown job kind {args.kind!r}; the service takes "
                                     f"{', '.join(sorted(kinds)) or 'none'}")
    body = specs.build(args.kind, written, sets, kinds[args.kind])
    job = api.json("POST", f"/jobs/{args.kind}", json=body)
    if args.json and not args.follow:
        _print_json(job)
        return OK
    if not args.json:
        print(f"job {job['id']} {job['state']}: {api.target.url}/status?job={job['id']}", flush=True)
    if not args.follow:
        return OK
    return _follow(api, job["id"], args)


def list_jobs(api: Api, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    answer = api.json("GET", "/jobs", params=params)
    jobs = [j for j in answer.get("jobs", []) if not args.kind or j.get("kind") == args.kind]
    if args.json:
        _print_json({**answer, "jobs": jobs})
        return OK
    if not jobs:
        print("no jobs")
        return OK
    print(f"{'ID':<34} {'KIND':<8} {'STATE':<10} {'NAME':<24} PROGRESS")
    for job in jobs:
        progress = job.get("progress") or {}
        step = f"step {progress['step']}/{progress.get('total_steps')}" if progress.get("step") else ""
        print(f"{job['id']:<34} {job['kind']:<8} {job['state']:<10} {job.get('name') or '':<24} {step}")
    return OK


def show(api: Api, args: argparse.Namespace) -> int:
    job = api.json("GET", f"/jobs/{args.id}")
    if args.json:
        _print_json(job)
        return OK
    for line in summary(job) if job["state"] in TERMINAL else [f"job {job['id']} ({job['kind']}) {job['state']}"]:
        print(line)
    progress = job.get("progress") or {}
    if progress and job["state"] not in TERMINAL:
        print("  progress: " + ", ".join(f"{k} {v}" for k, v in progress.items() if not isinstance(v, dict)))
    spec = job.get("spec") or {}
    shown = {k: v for k, v in spec.items() if v not in (None, [], False) and k != "kind"}
    print("  spec: " + json.dumps(shown, ensure_ascii=False))
    return OK


def logs(api: Api, args: argparse.Namespace) -> int:
    api.json("GET", f"/jobs/{args.id}")  # a clear 404 (or 4: no service) before any stream
    if args.follow:
        return _follow(api, args.id, args)
    progress = Progress()
    for event in events(api, args.id, follow=False):
        _show_event(event, progress, args.json, sys.stdout)
    return OK


def cancel(api: Api, args: argparse.Namespace) -> int:
    job = api.json("POST", f"/jobs/{args.id}/cancel")
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} {'cancelled' if job['state'] == 'cancelled' else 'is being cancelled'}")
    return OK


def delete(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/jobs/{args.id}")
    if args.json:
        _print_json({"id": args.id, "deleted": True})
    else:
        print(f"job {args.id} deleted")
    return OK


def wait(api: Api, args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    down_since: float | None = None
    job = api.json("GET", f"/jobs/{args.id}")  # no service at all, or no such job: said at once
    while True:
        try:
            job = api.json("GET", f"/jobs/{args.id}")
            down_since = None
        except ClientError as exc:
            # A service that restarts meanwhile is waited for, as following does.
            down_since = down_since if down_since is not None else time.monotonic()
            if exc.code != UNREACHABLE or time.monotonic() - down_since > args.retry_s:
                raise
            time.sleep(max(0.1, args.interval))
            continue
        if job["state"] in TERMINAL:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise ClientError(UNREACHABLE, f"job {args.id} is still {job['state']} after {args.timeout:g} s")
        time.sleep(max(0.1, args.interval))
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} {job['state']}")
    return EXIT_BY_STATE[job["state"]]


ACTIONS = {"submit": submit, "list": list_jobs, "show": show, "logs": logs, "cancel": cancel,
           "delete": delete, "wait": wait}


# ---- following ------------------------------------------------------------------------------
class _Screen:
    """The progress line redrawn in place on a terminal; elsewhere (a log file, a pipe) the
    lines worth keeping plus the progress line at each tenth of the run."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.drawn = False
        self.shown = ""
        self.tenth = -1

    def keep(self, line: str) -> None:
        self._clear()
        print(line, file=self.stream, flush=True)

    def progress(self, progress: Progress) -> None:
        line = progress.line()
        if not line:
            return
        if self.tty:
            if self.drawn and line == self.shown:
                return  # an event that changed nothing on the line
            self._clear()
            self.shown = line
            self.stream.write(line[:200])
            self.stream.flush()
            self.drawn = True
            return
        step = progress.step
        if step is not None and step.total_steps:
            tenth = int(10 * (step.step or 0) / step.total_steps)
            if tenth > self.tenth:
                self.tenth = tenth
                print("  " + line, file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False


def _show_event(event: Event, progress: Progress, as_json: bool, stream: TextIO,
                screen: _Screen | None = None) -> None:
    if as_json:
        print(json.dumps({"id": event.id, **event.body}, ensure_ascii=False), file=stream, flush=True)
        return
    try:
        parsed = JobEvent.model_validate(event.body)
    except ValueError:
        return
    line = progress.add(parsed)
    if screen is None:
        print(_plain_line(event, line), file=stream)
        return
    if line:
        screen.keep(f"  {line}")
    screen.progress(progress)


def _plain_line(event: Event, note: str | None) -> str:
    """``logs``: every event, one line each, with its time."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.body.get("ts") or 0))
    data = event.data
    text = note or " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in data.items())
    return f"{stamp} {event.type:<12} {text}"


def _follow(api: Api, job_id: str, args: argparse.Namespace) -> int:
    progress = Progress()
    screen = None if args.json else _Screen(sys.stdout)

    def retrying(reason: str) -> None:
        # On stderr: the --json output stays the events and nothing else.
        if screen is not None:
            screen.keep("")
        print(f"cnclip jobs: connection lost ({reason}); reconnecting", file=sys.stderr, flush=True)

    for event in events(api, job_id, follow=True, retry_s=args.retry_s, on_retry=retrying):
        _show_event(event, progress, args.json, sys.stdout, screen)
    job = api.json("GET", f"/jobs/{job_id}")
    if args.json:
        _print_json(job)
    else:
        screen.keep("")
        for line in summary(job, cause=progress.cause):
            print(line)
    return EXIT_BY_STATE.get(job["state"], OK)
