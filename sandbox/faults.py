"""Fault injection shared by the sandboxes: tests ask for 5xx, slow answers, dropped connections, or answers
lost after the call took effect, one by one; ``DSR_DEMO_FAULTS`` and bench/chaos.py ask for them at random
rates (:class:`FaultRates`). Each sandbox puts :class:`FaultMiddleware` outermost, with injected errors in its
vendor's own error shape (:func:`stripe_error` for Stripe)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dsr.config.settings import ConfigError

FAULTS_VARIABLE = "DSR_DEMO_FAULTS"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class FaultRates:
    """The share of requests that suffer each fault, drawn independently for every request (at most one
    fault per request). ``slow`` delays the answer by ``slow_seconds``; ``429`` carries ``Retry-After``."""

    error: float = 0.0  # 500, 502 or 503
    throttle: float = 0.0  # 429 with Retry-After
    slow: float = 0.0
    drop: float = 0.0  # the connection closes before the sandbox sees the request
    lost: float = 0.0  # the sandbox carries the request out, then the answer is lost
    slow_seconds: float = 2.0
    retry_after_seconds: int = 1

    @property
    def total(self) -> float:
        return self.error + self.throttle + self.slow + self.drop + self.lost

    def __bool__(self) -> bool:
        return self.total > 0

    def describe(self) -> str:
        return ", ".join(f"{name} {rate:.0%}" for name, rate in (
            ("5xx", self.error), ("429", self.throttle), ("slow", self.slow), ("dropped", self.drop),
            ("answer lost", self.lost)) if rate)

    @classmethod
    def uniform(cls, share: float) -> FaultRates:
        """``share`` of all requests faulted, spread over the five faults (a third of it 5xx and 429)."""
        return cls(error=share * 0.3, throttle=share * 0.3, slow=share * 0.2, drop=share * 0.1, lost=share * 0.1)


_KEYS = {"5xx": "error", "429": "throttle", "slow": "slow", "drop": "drop", "lost": "lost"}


def parse_fault_rates(raw: str, name: str = FAULTS_VARIABLE) -> FaultRates:
    """``5xx=0.05,429=0.05,slow=0.05,drop=0.02,lost=0.02`` (any subset; rates between 0 and 1, summing to
    at most 1). Empty: no faults. Anything else is a :class:`ConfigError` naming the variable."""
    expected = f"{name} must look like 5xx=0.05,429=0.05,slow=0.05,drop=0.02,lost=0.02"
    rates: dict[str, float] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in _KEYS or _KEYS[key] in rates:
            raise ConfigError(f"{expected} (keys 5xx, 429, slow, drop, lost, each once); got {raw!r}")
        try:
            rate = float(value)
        except ValueError:
            raise ConfigError(f"{expected}; {key} is not a number: {value.strip()!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{expected}; {key}={rate} is not between 0 and 1")
        rates[_KEYS[key]] = rate
    parsed = FaultRates(**rates)  # type: ignore[arg-type]  # keys checked against _KEYS: the float fields only
    if parsed.total > 1.0:
        raise ConfigError(f"{expected}; the rates add up to {parsed.total:g}, more than 1")
    return parsed


def fault_rates_from_env(env: Mapping[str, str]) -> FaultRates:
    return parse_fault_rates(env.get(FAULTS_VARIABLE, ""))


@dataclass(frozen=True)
class Applied:
    """A request the sandbox carried out: what a vendor's write log would show."""

    request: str  # "METHOD /path"
    body: str  # digest of the request body ("" without one)
    status: int

    @property
    def mutating(self) -> bool:
        """A write: searches and batch reads are POSTs that change nothing."""
        method, _, path = self.request.partition(" ")
        return method in MUTATING and not path.rstrip("/").endswith(("/search", "/read"))


@dataclass
class Faults:
    """What the next requests suffer. Tests mutate it between calls; every field is consumed in order."""

    statuses: list[int] = field(default_factory=list)  # answer the next requests with these statuses
    delay_seconds: float = 0.0  # every answer waits this long first
    drop_next: int = 0  # close the connection without answering for the next N requests
    retry_after: str | None = None  # Retry-After header sent with injected 429/503
    lose_answers: list[str] = field(default_factory=list)
    """``"METHOD /path-prefix"`` each: the next request matching the first one is carried out, then its
    answer is lost (the connection closes mid-response), as when a proxy or the network fails after the
    vendor acted. Consumed in order."""
    log: list[str] = field(default_factory=list)  # "METHOD /path" of every request, as it arrived
    rates: FaultRates = field(default_factory=FaultRates)  # random faults, after the ones asked for above
    rng: random.Random = field(default_factory=random.Random)
    applied: list[Applied] = field(default_factory=list)  # every request the sandbox carried out, with its status
    injected: dict[str, int] = field(default_factory=dict)  # random faults injected, by kind

    def clear(self) -> None:
        self.statuses.clear()
        self.delay_seconds = 0.0
        self.drop_next = 0
        self.retry_after = None
        self.lose_answers.clear()

    def draw(self) -> str | None:
        """The random fault the next request suffers, if any: ``5xx``, ``429``, ``slow``, ``drop`` or ``lost``."""
        if not self.rates:
            return None
        roll = self.rng.random()
        for kind, rate in (("5xx", self.rates.error), ("429", self.rates.throttle), ("slow", self.rates.slow),
                           ("drop", self.rates.drop), ("lost", self.rates.lost)):
            if roll < rate:
                self.injected[kind] = self.injected.get(kind, 0) + 1
                return kind
            roll -= rate
        return None

    def mutated_twice(self) -> list[tuple[str, int]]:
        """Mutating requests (same method, path and body) the sandbox carried out successfully more than once."""
        seen: dict[tuple[str, str], int] = {}
        for entry in self.applied:
            if entry.mutating and 200 <= entry.status < 300:
                seen[(entry.request, entry.body)] = seen.get((entry.request, entry.body), 0) + 1
        return [(request, n) for (request, _), n in seen.items() if n > 1]

    def _loses(self, request: str) -> bool:
        method, _, prefix = self.lose_answers[0].partition(" ") if self.lose_answers else ("", "", "")
        if self.lose_answers and request.startswith(f"{method} {prefix}"):
            self.lose_answers.pop(0)
            return True
        return False


class FaultMiddleware:
    """ASGI middleware applying :class:`Faults` before the sandbox sees the request."""

    def __init__(self, app: ASGIApp, faults: Faults, error_body: Callable[[int], bytes] | None = None) -> None:
        self.app = app
        self.faults = faults
        # The body of an injected error, in the vendor's own shape (a client SDK may read nothing else).
        self.error_body = error_body or (lambda status: b'{"message": "injected fault"}')

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._faulted(scope, receive, send)
        except ClientDisconnect:
            return  # the client left before its request arrived whole: nothing carried out, no one to answer

    async def _faulted(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = f"{scope['method']} {scope['path']}"
        self.faults.log.append(request)
        drawn = None if (self.faults.statuses or self.faults.drop_next or self.faults.lose_answers) \
            else self.faults.draw()
        if drawn == "slow":
            await asyncio.sleep(self.faults.rates.slow_seconds)
        elif drawn == "drop":
            await _drop(send)
        elif drawn in ("5xx", "429"):
            status = 429 if drawn == "429" else self.faults.rng.choice((500, 502, 503))
            headers = [(b"content-type", b"application/json")]
            if status in (429, 503):
                headers.append((b"retry-after", str(self.faults.rates.retry_after_seconds).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": self.error_body(status)})
            return
        if drawn == "lost" or self.faults._loses(request):
            async def swallow(message: Message) -> None:
                if message["type"] == "http.response.start":
                    self.faults.applied.append(Applied(request, digest, int(message["status"])))

            receive, digest = await _recorded(receive) if scope["method"] in MUTATING else (receive, "")
            await self.app(scope, receive, swallow)  # the call takes effect...
            # ...and its answer never arrives: a response announced and abandoned makes uvicorn close the
            # connection, which the client sees as a transport error.
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")]})
            return
        if self.faults.delay_seconds:
            await asyncio.sleep(self.faults.delay_seconds)
        if self.faults.drop_next > 0:
            self.faults.drop_next -= 1
            await _drop(send)
        if self.faults.statuses:
            status = self.faults.statuses.pop(0)
            headers = [(b"content-type", b"application/json")]
            if self.faults.retry_after is not None:
                headers.append((b"retry-after", self.faults.retry_after.encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": self.error_body(status)})
            return
        receive, digest = await _recorded(receive) if scope["method"] in MUTATING else (receive, "")

        async def logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.faults.applied.append(Applied(request, digest, int(message["status"])))
            await send(message)

        await self.app(scope, receive, logged)


async def _drop(send: Send) -> None:
    # Raising before a response starts makes uvicorn answer 500; starting one and then raising
    # makes it close the connection mid-response: what a client sees when a proxy drops it.
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
    raise ConnectionAbortedError("sandbox fault: dropped connection")


async def _recorded(receive: Receive) -> tuple[Receive, str]:
    """Read the whole request body (to log its digest), and a ``receive`` that replays it to the app."""
    replay, body = await buffered_body(receive)
    return replay, hashlib.sha256(body).hexdigest()[:16] if body else ""


async def buffered_body(receive: Receive) -> tuple[Receive, bytes]:
    """Read the whole request body, and a ``receive`` that replays it to the app behind (middleware that must see
    the body first: the fault log, the tests' API-description checks).

    A client that disconnects first (a killed worker, a client's timeout) raises :class:`ClientDisconnect`:
    uvicorn then answers ``http.disconnect`` even for body bytes it had buffered, and replaying what was read
    as the whole body made the sandbox carry out the request with *no parameters*. For Stripe that stored the
    idempotency key with the wrong parameters, and the client's retry of the real request was refused
    (HTTP 400 ``idempotency_error``, 2 requests of 100 in a chaos run). A vendor never carries out a request it
    did not receive whole (the body's length is in its headers)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay, body


class DropConnections:
    """Make :class:`FaultMiddleware`'s dropped connections real ones under uvicorn.

    Raising before a response starts makes uvicorn answer 500 instead of closing the socket; starting
    the response (with ``partial_body``, the first bytes of the vendor's JSON) and then raising makes it close the
    connection mid-response, which clients see as a broken connection (httpx: ``RemoteProtocolError``), as a
    vendor's load balancer dropping it would.
    """

    def __init__(self, app: ASGIApp, partial_body: bytes) -> None:
        self.app = app
        self.partial_body = partial_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ConnectionAbortedError:
            if not started:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": self.partial_body, "more_body": True})
            raise

def stripe_error(status: int) -> bytes:
    """An injected error as Stripe answers one (``{"error": {...}}``): the official SDK reads the status and
    the ``Retry-After`` header of such an answer only; any other body becomes an "invalid response" whose
    headers are lost, so a connector could not honour Retry-After."""
    if status == 429:
        error = {"type": "invalid_request_error", "code": "rate_limit",
                 "message": "Too many requests hit the API too quickly (injected fault)."}
    else:
        error = {"type": "api_error", "message": "An error occurred with our connection to Stripe (injected fault)."}
    return json.dumps({"error": error}).encode()
