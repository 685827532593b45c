"""API tokens and who is asking.

A token is ``fs_`` + 32 random bytes (URL-safe base64).  Redis keeps only its
SHA-256, never the token itself::

    P:token:{sha256}        hash: user, admin (0/1), created, label
    P:user:{name}:tokens    set of the user's token hashes (for listing and revoking)

A plain (fast) hash is the right tool here, not a password hash such as bcrypt:
the tokens are 256-bit random secrets, so there is nothing to guess, and a
slow hash would only make every request slower.

Requests carry the token as ``Authorization: Bearer <token>``; the web pages
send the same token in the ``fitserve_token`` cookie (HttpOnly,
SameSite=Strict, set by ``/login``).  In ``open`` mode (the default of
``fitserve up`` on 127.0.0.1) there are no tokens: every request is the local
user, who sees everything.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

TOKEN_PREFIX = "fs_"
COOKIE = "fitserve_token"
USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
#: the one user of open mode
LOCAL_USER = "local"


@dataclass(frozen=True)
class Principal:
    """Who a request comes from."""

    user: str
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        """May this principal see a job owned by ``owner``?  (Admins see every job.)"""
        return self.admin or (owner is not None and hmac.compare_digest(owner, self.user))


#: everybody, in open mode
OPEN = Principal(LOCAL_USER, admin=True)


class AuthError(Exception):
    """No usable credentials: the API answers 401 with this message."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_user_name(user: str) -> str:
    if not USER_RE.fullmatch(user or ""):
        raise ValueError(f"invalid user name {user!r}: 1-64 characters, letters, digits and . _ @ + - (not first)")
    return user


class TokenStore:
    """Create, look up, list and revoke API tokens in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "fitserve") -> None:
        self.r = client
        self.p = prefix

    def _key(self, sha: str) -> str:
        return f"{self.p}:token:{sha}"

    def _user_key(self, user: str) -> str:
        return f"{self.p}:user:{user}:tokens"

    def create(self, user: str, admin: bool = False, label: str = "") -> str:
        """A new token for ``user`` (shown once: only its hash is stored)."""
        check_user_name(user)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        sha = token_hash(token)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            self._key(sha), mapping={"user": user, "admin": int(admin), "created": time.time(), "label": label[:200]}
        )
        pipe.sadd(self._user_key(user), sha)
        pipe.execute()
        return token

    def lookup(self, token: str) -> Principal | None:
        """The principal of a valid token, else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        h = self.r.hgetall(self._key(token_hash(token)))
        if not h:
            return None
        user = h[b"user"].decode()
        return Principal(user, admin=h.get(b"admin") == b"1")

    def list(self) -> list[dict[str, Any]]:
        """Every token's id (first 12 hex digits of its hash), user, role, creation time and label."""
        out = []
        for key in self.r.scan_iter(match=self._key("*"), count=1000):
            h = {k.decode(): v.decode() for k, v in self.r.hgetall(key).items()}
            if not h:
                continue
            sha = key.decode().rsplit(":", 1)[1]
            out.append(
                {
                    "id": sha[:12],
                    "user": h.get("user"),
                    "admin": h.get("admin") == "1",
                    "created": float(h.get("created", 0)),
                    "label": h.get("label", ""),
                }
            )
        return sorted(out, key=lambda t: (t["user"] or "", t["created"]))

    def revoke(self, token_id: str | None = None, user: str | None = None) -> int:
        """Revoke one token by id (a prefix of its hash, at least 8 hex digits) or all tokens of ``user``."""
        shas: list[str] = []
        if user is not None:
            shas += [s.decode() for s in self.r.smembers(self._user_key(user))]
        if token_id is not None:
            if not re.fullmatch(r"[0-9a-f]{8,64}", token_id):
                raise ValueError(f"invalid token id {token_id!r}: the hex id shown by `fitserve token list`")
            shas += [
                k.decode().rsplit(":", 1)[1] for k in self.r.scan_iter(match=self._key(token_id + "*"), count=1000)
            ]
        n = 0
        for sha in set(shas):
            owner = self.r.hget(self._key(sha), "user")
            n += int(self.r.delete(self._key(sha)))
            if owner is not None:
                self.r.srem(self._user_key(owner.decode()), sha)
        return n


def credentials(authorization: str | None, cookie: str | None) -> str | None:
    """The token a request carries: the bearer header first, then the web pages' cookie."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("malformed Authorization header: expected 'Authorization: Bearer <token>'")
        return value.strip()
    return cookie or None


def auth_mode(settings: Any) -> str:
    """``open`` or ``token``; unset means ``token`` (the commands choose by the address they bind)."""
    return settings.auth or "token"


def authenticate(mode: str, tokens: TokenStore, authorization: str | None, cookie: str | None) -> Principal:
    """The principal of a request, or :class:`AuthError` (answered as 401)."""
    if mode == "open":
        return OPEN
    token = credentials(authorization, cookie)
    if token is None:
        raise AuthError(
            "missing API token: send 'Authorization: Bearer <token>' "
            "(the service's operator creates one with `fitserve token create --user NAME`)"
        )
    principal = tokens.lookup(token)
    if principal is None:
        raise AuthError("invalid or revoked API token")
    return principal
