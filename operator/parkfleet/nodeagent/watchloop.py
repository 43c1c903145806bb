"""A list-then-watch loop that outlives the API server: run again, with backoff, forever.

The node agent follows several kinds of objects this way (pools, pods, revocations,
namespaces); each brings one pass (list, then watch until the server ends the watch) and
this runs it again and again until cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from parkfleet.backoff import Backoff

__all__ = ["EXPECTED_API_ERRORS", "keep_watching"]

log = logging.getLogger(__name__)

# What a loop talking to the API server expects to see now and then: the server away, a
# request refused or timed out. Anything else is a bug, logged with its traceback.
EXPECTED_API_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError, ConnectionError)
RETRY_S = 1.0
RETRY_MAX_S = 30.0


async def keep_watching(what: str, one_pass: Callable[[Backoff], Awaitable[None]]) -> None:
    """Runs ``one_pass`` until cancelled: again at once when it returns (the watch ended),
    after a backoff when it fails. It calls ``reset()`` on the backoff it is given once its
    list has worked."""
    retry = Backoff(base_s=RETRY_S, cap_s=RETRY_MAX_S, floor_s=RETRY_S / 4)
    while True:
        try:
            await one_pass(retry)
        except asyncio.CancelledError:
            raise
        except EXPECTED_API_ERRORS as exc:
            log.warning("%s: %s; relisting", what, exc)
            await retry.wait()
        except Exception:
            log.exception("%s failed; relisting", what)
            await retry.wait()
