"""One OpenAI client with the project's retry policy and key masking, shared by the embedder and the describer.

The SDK's own retries are off (``max_retries=0``) so that the policy here is the only one and is testable:
429, 5xx, connection errors and time-outs are retried with exponential backoff and jitter (a longer
``Retry-After`` wins); other HTTP errors fail at once. Failures become one-line ``OpenAIServiceError``\\ s
that name the request and the server's message, with the API key masked even when a server echoes it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Callable, TypeVar

from synthgen.errors import InputError

log = logging.getLogger(__name__)
T = TypeVar("T")
MESSAGE_CHARS = 300  # server messages are cut to this length in errors and logs


class OpenAIServiceError(InputError):
    """The OpenAI service refused or kept failing; the message says how, on one line, never with the API key."""


class OpenAIService:
    """An ``openai.OpenAI`` client plus the retry loop. ``user`` names the caller and ``offline_hint`` what to
    use instead in the missing-key error (e.g. "the OpenAI embedder", "use the offline embedder: --embedder
    local"); the key comes from ``api_key`` or ``OPENAI_API_KEY``, the endpoint from ``base_url`` or
    ``OPENAI_BASE_URL``."""

    def __init__(self, *, user: str, offline_hint: str, api_key: str | None = None, base_url: str | None = None,
                 max_attempts: int = 6,
                 base_delay: float = 1.0, max_delay: float = 30.0, timeout: float = 60.0,
                 error: type[OpenAIServiceError] = OpenAIServiceError) -> None:
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise InputError(f"{user} needs an API key: set OPENAI_API_KEY (or {offline_hint})")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        import openai

        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.error = error
        self._key = key
        self.client = openai.OpenAI(api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                                    max_retries=0, timeout=timeout)

    def call(self, what: str, request: Callable[[Any], T]) -> T:
        """``request(client)`` under the retry policy; raises ``self.error`` naming ``what`` on failure."""
        import openai

        for attempt in range(1, self.max_attempts + 1):
            try:
                return request(self.client)
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as err:
                reason = self.describe(err)
                if attempt == self.max_attempts:
                    raise self.error(f"{what} failed after {attempt} attempts; last error: {reason}") from None
                delay = self._delay(attempt, err)
                log.warning("%s: %s; retry %d/%d in %.2f s", what, reason, attempt, self.max_attempts - 1, delay)
                time.sleep(delay)
            except openai.APIStatusError as err:
                raise self.error(f"{what} was refused: {self.describe(err)}") from None
            except (openai.APIError, ValueError) as err:  # e.g. a 200 whose body is not JSON (JSONDecodeError)
                raise self.error(f"{what} got an unreadable reply: {self.describe(err)}") from None
        raise AssertionError("unreachable")  # the loop either returns or raises

    def mask(self, text: str) -> str:
        """``text`` on one line, cut to MESSAGE_CHARS, with the API key replaced by ***."""
        return " ".join(str(text).replace(self._key, "***").split())[:MESSAGE_CHARS]

    def describe(self, err: Exception) -> str:
        """Status and server message of an SDK error, masked."""
        status = getattr(err, "status_code", None)
        return self.mask(f"HTTP {status}: {getattr(err, 'message', err)}" if status else f"{type(err).__name__}: {err}")

    def _delay(self, attempt: int, err: Exception) -> float:
        """Exponential backoff with jitter; a server's Retry-After (seconds) wins when it is longer."""
        delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            return max(delay, min(self.max_delay, float(retry_after))) if retry_after else delay
        except ValueError:
            return delay
