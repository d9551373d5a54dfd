"""What the service answers when something goes wrong, declared once on the app for every route:
the job store's and the results reader's domain errors, Redis being away, and requests that do
not validate. Routes raise the domain error; the status code and the words live here."""
from __future__ import annotations

from typing import Callable

import redis as redis_lib
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from shared.jobs import IdempotencyConflict, InvalidTransition, JobNotFound, JobUnreadable, RunNameTaken
from services.control.results import ResultsUnavailable


def not_found(exc: JobNotFound) -> str:
    return f"no job {exc.args[0]}"


def transition_refused(exc: InvalidTransition) -> str:
    """Why a cancel or a delete cannot be done, in the words of what was asked."""
    if exc.current == "unreadable":
        return f"the record of job {exc.job_id} cannot be read: delete it"
    if exc.wanted == "deleted":
        return f"job {exc.job_id} is {exc.current}: cancel it first"
    if exc.wanted == "cancelled":
        return f"job {exc.job_id} already {exc.current}"
    return str(exc)


def validation_errors(exc: RequestValidationError) -> list[dict]:
    """The errors without the offending input: FastAPI's default answer echoes it, which fails
    (500) for values JSON cannot carry (NaN, infinity) and repeats whatever a client sent."""
    errors = []
    for error in exc.errors():
        errors.append({"loc": [part if isinstance(part, (str, int)) else str(part)
                               for part in error.get("loc", ())],
                       "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))})
    return errors


# exception class -> (status, the answer's detail)
DOMAIN_ERRORS: dict[type[Exception], tuple[int, Callable[[Exception], object]]] = {
    JobNotFound: (404, not_found),
    JobUnreadable: (409, str),
    InvalidTransition: (409, transition_refused),
    IdempotencyConflict: (409, str),
    RunNameTaken: (409, str),
    ResultsUnavailable: (409, str),
    redis_lib.RedisError: (503, lambda exc: f"Redis is unavailable: {exc}"),
    RequestValidationError: (422, validation_errors),
}


def add_error_handlers(app: FastAPI) -> None:
    for error, (status, detail) in DOMAIN_ERRORS.items():
        async def handler(_request: Request, exc: Exception, status=status, detail=detail) -> JSONResponse:
            return JSONResponse({"detail": detail(exc)}, status_code=status)
        app.add_exception_handler(error, handler)
