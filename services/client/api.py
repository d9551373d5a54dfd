"""The job API over HTTP, with every failure turned into a :class:`ClientError` that carries
the command's exit code and a one-line message (the API's own words, per field for a spec)."""
from __future__ import annotations

import re
from typing import Any, Iterator

import httpx

from services.client.config import Target

# Exit codes of every ``cnclip jobs`` command (README: "Jobs from the terminal").
OK, FAILED, BAD_INPUT, CANCELLED, UNREACHABLE = 0, 1, 2, 3, 4
TERMINAL = ("succeeded", "failed", "cancelled")
EXIT_BY_STATE = {"succeeded": OK, "failed": FAILED, "cancelled": CANCELLED}
# Answers that mean "the service is not there right now" rather than "the request is wrong".
UNAVAILABLE = (502, 503, 504)
KIND_PATH = re.compile(r"^/jobs/([a-z][a-z0-9_-]*)$")


class ClientError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = " ".join(str(message).split())  # one line, whatever the server sent


def describe_detail(detail: Any) -> str:
    """FastAPI's ``detail``: a string, or a list of ``{loc, msg}`` shown as ``field: msg; ...``."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path", "header")]
            parts.append(f"{'.'.join(loc) or 'spec'}: {item.get('msg', '')}")
        return "; ".join(parts)
    return str(detail)


def error_for(response: httpx.Response) -> ClientError:
    try:
        detail = describe_detail(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        detail = response.text.strip()[:300] or response.reason_phrase
    code = response.status_code
    if code == 401:
        return ClientError(BAD_INPUT, "the control service refused the token (401): check --token or "
                                      "CNCLIP_CONTROL_TOKEN")
    if code in UNAVAILABLE:
        return ClientError(UNREACHABLE, f"the control service is unavailable ({code}): {detail}")
    if code >= 500:
        return ClientError(FAILED, f"the control service failed ({code}): {detail}")
    return ClientError(BAD_INPUT, f"{detail} ({code})" if code not in (404, 422) else detail)


class Api:
    def __init__(self, target: Target, timeout: float = 30.0, read_timeout: float = 90.0):
        self.target = target
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        # Reads of a followed stream wait at most read_timeout: the service pings every 15 s
        # by default, so a silence that long is a dead connection, then resumed.
        self.http = httpx.Client(base_url=target.url, headers=headers,
                                 timeout=httpx.Timeout(timeout, read=read_timeout))

    def close(self) -> None:
        self.http.close()

    def unreachable(self, exc: Exception) -> ClientError:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        return ClientError(UNREACHABLE, f"cannot reach the control service at {self.target.url} "
                                        f"(from {self.target.source}): {reason}")

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.InvalidURL as exc:
            raise ClientError(BAD_INPUT, f"invalid service URL {self.target.url!r}: {exc}") from None
        except (httpx.TransportError, httpx.UnsupportedProtocol) as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def json(self, method: str, path: str, **kwargs) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(UNREACHABLE, f"{self.target.url} answered {path} with something that is "
                                           "not JSON: is it the control service?") from None

    def stream(self, path: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        return self.http.stream("GET", path, headers=headers)

    # ---- what the service offers ------------------------------------------------------------
    def schema(self) -> dict[str, Any]:
        return self.json("GET", "/openapi.json")

    def kinds(self, schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """kind -> the JSON schema of its spec, for every ``POST /jobs/<kind>`` the API has."""
        components = schema.get("components", {}).get("schemas", {})
        kinds = {}
        for path, ops in schema.get("paths", {}).items():
            match = KIND_PATH.match(path)
            if not match or "post" not in ops:
                continue
            body = ops["post"].get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "")
            kinds[match.group(1)] = components.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        return kinds
