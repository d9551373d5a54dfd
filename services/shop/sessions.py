"""QR login tokens and login sessions of the demo shop, kept in memory.

A login goes: the login page asks for a token and shows it as a QR code; a phone "scans" it
(``confirm``); the page sees ``confirmed`` and calls ``complete``, which spends the token once
and opens a session whose id goes into an HttpOnly cookie.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

QRState = Literal["waiting", "confirmed", "expired"]
QR_PAYLOAD_PREFIX = "cnclip-shop-login:"


def qr_payload(token: str) -> str:
    """What the QR code encodes."""
    return QR_PAYLOAD_PREFIX + token


@dataclass
class QRToken:
    token: str
    created: float
    expires_at: float
    confirmed_at: float | None = None
    used: bool = False  # spent by a completed login

    def state(self, now: float) -> QRState:
        if self.confirmed_at is not None:
            return "confirmed"
        return "expired" if now >= self.expires_at else "waiting"

    def as_dict(self, now: float) -> dict:
        return {
            "token": self.token,
            "payload": qr_payload(self.token),
            "state": self.state(now),
            "used": self.used,
            "created": self.created,
            "expires_at": self.expires_at,
        }


@dataclass
class Session:
    session_id: str
    nick: str
    created: float
    expires_at: float


class LoginBook:
    """Thread-safe store of QR tokens and sessions (handlers run in a thread pool)."""

    def __init__(self, *, qr_ttl_s: float, session_ttl_s: float, nick: str,
                 clock: Callable[[], float] = time.time):
        self.qr_ttl_s = qr_ttl_s
        self.session_ttl_s = session_ttl_s
        self.nick = nick
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, QRToken] = {}
        self._sessions: dict[str, Session] = {}

    # ---- QR tokens ------------------------------------------------------------------------
    def new_token(self) -> QRToken:
        now = self._clock()
        token = QRToken(secrets.token_urlsafe(12), created=now, expires_at=now + self.qr_ttl_s)
        with self._lock:
            self._forget_old_tokens(now)
            self._tokens[token.token] = token
        return token

    def _forget_old_tokens(self, now: float) -> None:
        # Keeps memory bounded when a login page is left open for days.
        horizon = now - max(600.0, 5 * self.qr_ttl_s)
        for key in [k for k, t in self._tokens.items() if t.expires_at < horizon]:
            del self._tokens[key]

    def token_state(self, token: str) -> QRState | None:
        with self._lock:
            found = self._tokens.get(token)
            return found.state(self._clock()) if found else None

    def confirm(self, token: str) -> QRState | None:
        """The phone's scan. Returns the token's state afterwards (None: unknown token);
        an expired code cannot be confirmed any more."""
        now = self._clock()
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            if found.state(now) == "waiting":
                found.confirmed_at = now
            return found.state(now)

    def complete(self, token: str) -> Session | None:
        """Spends a confirmed token and opens a session; None when the token is unknown,
        not confirmed or already spent."""
        now = self._clock()
        with self._lock:
            found = self._tokens.get(token)
            if found is None or found.used or found.state(now) != "confirmed":
                return None
            found.used = True
            session = Session(secrets.token_urlsafe(24), self.nick, now, now + self.session_ttl_s)
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            self._sessions[session.session_id] = session
            return session

    def tokens(self) -> list[dict]:
        now = self._clock()
        with self._lock:
            return [t.as_dict(now) for t in sorted(self._tokens.values(), key=lambda t: t.created)]

    # ---- sessions -------------------------------------------------------------------------
    def session(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            found = self._sessions.get(session_id)
            if found is None or found.expires_at <= self._clock():
                return None
            return found

    def expire_sessions(self) -> int:
        """Ends every session now; returns how many were open."""
        now = self._clock()
        with self._lock:
            count = sum(1 for s in self._sessions.values() if s.expires_at > now)
            self._sessions.clear()
            return count

    def active_sessions(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.expires_at > now)

    def reset(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._sessions.clear()
