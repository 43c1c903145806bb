"""The /metrics guard's bookkeeping: which requests reach the API server, and how often.

The reviews themselves (TokenReview, SubjectAccessReview against a real API server, with
the chart's identities) are tested end to end in ``tests/e2e/test_least_privilege.py``;
here a guard whose review answers from a table shows what the cache, the sharing of one
token's review and the bound on reviews in flight do.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kubernetes_asyncio import client

from parkfleet.kubeauth import NonResourceGuard, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TableGuard(NonResourceGuard):
    """Answers each token from ``answers`` (token -> status, or an exception to raise)."""

    answers: dict[str, Any]
    gate: asyncio.Event | None = None
    asked: list[str]
    running = 0
    most_running = 0

    async def _review(self, token: str) -> Verdict:
        self.reviews += 1
        self.asked.append(token)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            answer = self.answers[token]
            if isinstance(answer, Exception):
                raise answer
            return Verdict(answer, f"status {answer}", f"user-{token}")
        finally:
            self.running -= 1


def guard(answers: dict[str, Any], **kwargs: Any) -> tuple[TableGuard, Clock]:
    clock = Clock()
    g = TableGuard(api=cast(client.ApiClient, None), clock=clock, **kwargs)  # never called
    g.answers, g.asked = answers, []
    return g, clock


@pytest.mark.parametrize("header", ["", "Basic dXNlcjpwdw==", "Bearer ", "Bearer  "])
async def test_no_bearer_token_is_401_without_asking(header: str) -> None:
    g, _ = guard({})
    verdict = await g.check(header)
    assert verdict.status == 401
    assert verdict.reason == "a bearer token is required"
    assert g.asked == []


async def test_a_verdict_is_remembered_for_its_ttl_then_asked_again() -> None:
    g, clock = guard({"ok": 200, "no": 403}, allowed_ttl_s=60, denied_ttl_s=10)
    for _ in range(5):
        assert (await g.check("Bearer ok")).status == 200
        assert (await g.check("Bearer no")).status == 403
    assert g.asked == ["ok", "no"]
    clock.now += 11  # a refusal is remembered briefly: a right just granted shows soon
    assert (await g.check("Bearer no")).status == 403
    assert (await g.check("Bearer ok")).status == 200
    assert g.asked == ["ok", "no", "no"]
    clock.now += 50  # an allowed token past its TTL is checked again (a right removed)
    g.answers["ok"] = 403
    assert (await g.check("Bearer ok")).status == 403
    assert g.asked == ["ok", "no", "no", "ok"]


async def test_concurrent_scrapes_with_one_token_share_one_review() -> None:
    g, _ = guard({"ok": 200})
    g.gate = asyncio.Event()
    checks = [asyncio.create_task(g.check("Bearer ok")) for _ in range(20)]
    await asyncio.sleep(0)
    g.gate.set()
    assert {v.status for v in await asyncio.gather(*checks)} == {200}
    assert g.asked == ["ok"]


async def test_a_scrape_that_gives_up_does_not_cancel_the_others_review() -> None:
    g, _ = guard({"ok": 200})
    g.gate = asyncio.Event()
    first = asyncio.create_task(g.check("Bearer ok"))
    second = asyncio.create_task(g.check("Bearer ok"))
    await asyncio.sleep(0)
    first.cancel()
    g.gate.set()
    assert (await second).status == 200
    assert g.asked == ["ok"]


async def test_an_api_failure_is_503_and_not_remembered() -> None:
    g, _ = guard({"t": OSError("connection refused")})
    verdict = await g.check("Bearer t")
    assert (verdict.status, verdict.reason) == (503, "cannot check the token now: OSError")
    g.answers["t"] = 200
    assert (await g.check("Bearer t")).status == 200
    assert g.asked == ["t", "t"]


async def test_reviews_in_flight_are_bounded_and_the_cache_is_too() -> None:
    tokens = [f"t{i}" for i in range(12)]
    g, _ = guard(dict.fromkeys(tokens, 401), max_in_flight=3, max_entries=5)
    g.gate = asyncio.Event()
    checks = [asyncio.create_task(g.check(f"Bearer {t}")) for t in tokens]
    for _ in range(5):
        await asyncio.sleep(0)
    assert g.running == 3  # the other nine wait for a slot
    g.gate.set()
    assert {v.status for v in await asyncio.gather(*checks)} == {401}
    assert g.most_running == 3
    # The five most recent stay remembered; the first ones were forgotten.
    await g.check("Bearer t11")
    await g.check("Bearer t0")
    assert g.asked == [*tokens, "t0"]


async def test_the_cache_holds_digests_not_tokens() -> None:
    g, _ = guard({"s3cret": 200})
    await g.check("Bearer s3cret")
    assert all(isinstance(k, bytes) and len(k) == 32 for k in g._cache)
    assert "s3cret" not in repr(g)
