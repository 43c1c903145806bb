"""Who is calling, and may they: a bearer token checked with a TokenReview, a right
checked with a SubjectAccessReview, as a kubelet and kube-rbac-proxy check theirs.

The node agent's kubelet API (``kubectl logs``) and the authenticated ``/metrics`` of
the gateway and the operator both use it. :class:`NonResourceGuard` adds what a scraped
endpoint needs: verdicts cached per token (Prometheus sends the same token every
scrape), concurrent checks of one token made once, and a bound on reviews in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kubernetes_asyncio import client

__all__ = [
    "NonResourceGuard",
    "User",
    "Verdict",
    "may",
    "review_token",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class User:
    """Who called, as Kubernetes authentication says."""

    name: str
    groups: tuple[str, ...]
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


async def review_token(api: client.ApiClient, token: str) -> User | None:
    """The user a bearer token stands for (a TokenReview), or None when it is not valid.

    Raises:
        kubernetes_asyncio.client.exceptions.ApiException: The review itself failed (the
            caller's own identity may not create TokenReviews, or the API server is down).
    """
    review = await client.AuthenticationV1Api(api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    if not (review.status and review.status.authenticated and review.status.user):
        return None
    u = review.status.user
    extra = tuple(sorted((k, tuple(v)) for k, v in (u.extra or {}).items()))
    return User(u.username, tuple(u.groups or ()), u.uid or "", extra)


async def may(
    api: client.ApiClient,
    user: User,
    *,
    resource: client.V1ResourceAttributes | None = None,
    non_resource: client.V1NonResourceAttributes | None = None,
) -> bool:
    """Whether the cluster's authorizers allow ``user`` this (a SubjectAccessReview).

    Raises:
        kubernetes_asyncio.client.exceptions.ApiException: The review itself failed.
    """
    review = await client.AuthorizationV1Api(api).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user.name,
                groups=list(user.groups),
                uid=user.uid or None,
                extra={k: list(v) for k, v in user.extra} or None,
                resource_attributes=resource,
                non_resource_attributes=non_resource,
            )
        )
    )
    return bool(review.status and review.status.allowed)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one request: 200 (allowed), 401 (no valid token), 403 (no right) or
    503 (the API server could not be asked; never cached)."""

    status: Literal[200, 401, 403, 503]
    reason: str
    user: str = ""


@dataclass
class NonResourceGuard:
    """Lets through the callers allowed ``verb`` on the non-resource URL ``path``.

    Args:
        api: The client the reviews are made with (its identity needs ``create`` on
            tokenreviews and subjectaccessreviews).
        path: The URL, as RBAC names it (``nonResourceURLs``).
        verb: The verb (``get`` for a scrape).
        allowed_ttl_s: How long an allowed token stays allowed without asking again: a
            right removed takes up to this long to take effect.
        denied_ttl_s: The same for a refused token (short: a right just granted shows soon).
        max_entries: Tokens remembered (the least recently used are forgotten first).
        max_in_flight: Reviews at once; more callers wait (a flood of made-up tokens
            cannot become a flood of reviews).
        clock: Monotonic seconds (tests pass their own).
    """

    api: client.ApiClient
    path: str = "/metrics"
    verb: str = "get"
    allowed_ttl_s: float = 60.0
    denied_ttl_s: float = 10.0
    max_entries: int = 256
    max_in_flight: int = 4
    clock: Callable[[], float] = time.monotonic
    reviews: int = 0  # TokenReviews made (each may be followed by a SubjectAccessReview)
    _cache: OrderedDict[bytes, tuple[float, Verdict]] = field(
        default_factory=OrderedDict, init=False, repr=False
    )
    _pending: dict[bytes, asyncio.Task[Verdict]] = field(
        default_factory=dict, init=False, repr=False
    )
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    async def check(self, authorization: str) -> Verdict:
        """The verdict for a request's ``Authorization`` header (``Bearer TOKEN``)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Verdict(401, "a bearer token is required")
        # Keyed by a digest: the cache holds no token.
        key = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > self.clock():
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._decide(key, token))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # Shielded: a scrape that gives up does not cancel what others of its token await.
        return await asyncio.shield(task)

    async def _decide(self, key: bytes, token: str) -> Verdict:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        async with self._slots:
            try:
                verdict = await self._review(token)
            except Exception as exc:  # the API server's failure is not the caller's
                log.warning("cannot check a %s token: %s", self.path, exc)
                return Verdict(503, f"cannot check the token now: {type(exc).__name__}")
        ttl = self.allowed_ttl_s if verdict.status == 200 else self.denied_ttl_s
        self._cache[key] = (self.clock() + ttl, verdict)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return verdict

    async def _review(self, token: str) -> Verdict:
        self.reviews += 1
        user = await review_token(self.api, token)
        if user is None:
            return Verdict(401, "the token is not valid")
        attrs = client.V1NonResourceAttributes(path=self.path, verb=self.verb)
        if not await may(self.api, user, non_resource=attrs):
            return Verdict(403, f"{user.name} may not {self.verb} {self.path}", user.name)
        return Verdict(200, "allowed", user.name)
