"""Guessing codes against two intake replicas that share one ledger database (issue 12).

A model of what ``/verify`` (reference + identity code) and ``/exports/{token}`` (download code) must allow,
checked against the real pages (``intake_app`` + ``verify_router``) of two replicas, each with its own
:class:`dsr.store.guards.Guards` on its own engine over the same database (SQLite file, PostgreSQL server): what they
agree on was agreed in the database. Hypothesis draws sequences of answers sent to either replica from a few
client addresses, by an attacker (random codes, the reference, the codes of his own request and download, the
codes of another family, in every spelling) and by the subject (the real code), with the clock moved between
them (lockouts served, throttle windows past; the lasting cap never forgets).

What must hold, whatever the sequence:

* **no confirmation and no download without the real secret**: a confirmation reaches the workflow, and a bundle
  is served, only for the request's own code, typed in an accepted spelling; an erasure (link only) and an
  unknown reference are never confirmed by any code;
* **the cap**: every answer a request's page judges wrong counts, across both replicas, and the ``max_wrong``-th
  closes that request's code for good: from then on its real code fails too (``/verify``: the neutral "do not
  match" page; ``/exports``: the "locked" page), while the store's count is exactly the model's;
* **the throttles**: per page, no client gets more than ``per_client`` answers looked at per hour, and everyone
  together no more than ``overall``;
* **liveness**: the real code works (once not throttled or locked) as long as the cap is not reached.

The neighbours of the pages are doubles: the workflow's ``confirm_identity`` (a recorder: the workflow's own
refusals are tested in tests/workflows), the bundle opener, the audit hook.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dsr.store.guards import AnswerThrottle, Guards
from dsr.store.ledger import Ledger
from dsr.store.links import CODE_ALPHABET, DownloadLinks, IdentityLinks, format_code
from intake.service import IdentityOutcome
from intake.web.app import intake_app
from intake.web.verify import verify_router
from tests.harness import TEST_KEYRING

pytestmark = [
    pytest.mark.slow,  # stateful fuzzing of two replicas
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

MAX_WRONG = 10
THROTTLE = AnswerThrottle(per_client=30, overall=70, window=timedelta(hours=1))
ZIP = b"PK\x03\x04 the guessed bundle"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
EPOCH = timedelta(days=200)
"""Examples start this far apart: more than the waits of one (at most 150 days), so none sees another's windows."""
CLIENTS = ("198.51.100.7", "198.51.100.8", "203.0.113.9")
_SEPARATORS = str.maketrans("", "", " -.\u00a0\u202f\t")
_counter = itertools.count(1)


def _suffix(n: int) -> str:
    """Six characters for a fresh reference (``dsr-2026-03-XXXXXX``)."""
    symbols = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    out = ""
    for _ in range(6):
        n, r = divmod(n, len(symbols))
        out = symbols[r] + out
    return out


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Confirmations:
    """The workflow's ``confirm_identity`` as the pages see it: records every call."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, request_id: str, proof: str) -> IdentityOutcome:
        self.calls.append((request_id, proof))
        return IdentityOutcome("confirmed" if self.calls.count((request_id, proof)) == 1 else "already")


class Replicas:
    """Two apps over one database, and a synchronous way to call them from a given client address."""

    def __init__(self, database_url: str) -> None:
        self.clock = Clock()
        self.confirmations = Confirmations()
        self.downloads: list[str] = []
        self.identity = IdentityLinks(TEST_KEYRING, ttl=timedelta(days=30))
        self.links = DownloadLinks(TEST_KEYRING, ttl=timedelta(days=400))
        self.known: set[str] = set()  # references the (shared) ledger knows
        self.link_only: set[str] = set()  # erasures and rectifications: no code offered
        self.bundles: set[str] = set()
        self.locked_calls: list[tuple[str, str, int]] = []
        self.ledgers = [Ledger(database_url, TEST_KEYRING) for _ in range(2)]
        self.guards = [Guards(ledger.engine, TEST_KEYRING) for ledger in self.ledgers]
        self.apps = [self._app(guards) for guards in self.guards]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="guessing-asgi", daemon=True)
        self._thread.start()
        self._clients: dict[tuple[int, str], httpx.AsyncClient] = {}

    def _app(self, guards: Guards) -> Any:
        async def on_locked(request_id: str, page: str, wrong: int) -> None:
            self.locked_calls.append((request_id, page, wrong))

        def opener(request_id: str) -> Iterator[bytes] | None:
            return iter([ZIP]) if request_id in self.bundles else None

        def audit(request_id: str, event: str, details: dict[str, str]) -> None:
            self.downloads.append(request_id)

        common: dict[str, Any] = {"guards": guards, "clock": self.clock, "max_wrong": MAX_WRONG,
                                  "throttle": THROTTLE, "on_locked": on_locked}
        router = verify_router(self.identity, self.confirmations, exists=self.known.__contains__,
                               link_only=self.link_only.__contains__, **common)
        return intake_app(links=self.links, bundle_opener=opener, audit=audit, public_url="http://127.0.0.1:8235",
                          routers=[router], **common)

    def post(self, replica: int, client: str, path: str, data: dict[str, str]) -> httpx.Response:
        key = (replica, client)
        if key not in self._clients:
            transport = httpx.ASGITransport(app=self.apps[replica], raise_app_exceptions=False, client=(client, 4242))
            self._clients[key] = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        call = self._clients[key].post(path, data=data)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout=60)

    def close(self) -> None:
        for client in self._clients.values():
            asyncio.run_coroutine_threadsafe(client.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        for ledger in self.ledgers:
            ledger.close()


@pytest.fixture
def replicas(database_url: str) -> Iterator[Replicas]:
    pair = Replicas(database_url)
    try:
        yield pair
    finally:
        pair.close()


# --- one round: the world, the attacker's moves, the model --------------------------------------------------


@dataclass
class World:
    """The requests of one example (fresh references, so examples never share counters)."""

    access: str  # the victim's access request: a code was offered; its download link leaked (not its code)
    erasure: str  # the victim's erasure: link only
    unknown: str  # a well-formed reference nobody made
    own: str  # the attacker's own request: he knows its identity code and its download code
    token: str  # the victim's download link
    own_token: str  # the attacker's download link

    def secret(self, replicas: Replicas, page: str, target: str) -> str:
        """The real code of ``target`` on ``page``."""
        if page == "verify":
            return replicas.identity.request_code(target)
        return replicas.links.code(target)


def new_world(replicas: Replicas, epoch: int) -> World:
    n = next(_counter) * 7
    access, erasure, unknown, own = (f"dsr-2026-03-{_suffix(n + i)}" for i in range(4))
    replicas.known.update({access, erasure, own})
    replicas.link_only.add(erasure)
    replicas.bundles.update({access, own})
    at = START + EPOCH * epoch
    return World(access, erasure, unknown, own, replicas.links.issue(access, now=at).token,
                 replicas.links.issue(own, now=at).token)


SPELLINGS: dict[str, Callable[[str], str]] = {
    "as is": lambda c: c,
    "grouped": format_code,
    "lower grouped": lambda c: format_code(c).lower(),
    "spaced": lambda c: " ".join(c),
    "padded": lambda c: f"  {c.lower()}\t",
}
GUESSES = ("random", "reference", "own identity code", "own download code", "other family", "near miss")

move = st.fixed_dictionaries({
    "who": st.sampled_from(["attacker"] * 5 + ["subject"]),
    "page": st.sampled_from(["verify", "exports"]),
    "target": st.sampled_from(["access", "access", "access", "erasure", "unknown"]),
    "guess": st.sampled_from(GUESSES),
    "random": st.text(alphabet=CODE_ALPHABET, min_size=8, max_size=8),
    "spelling": st.sampled_from(sorted(SPELLINGS)),
    "replica": st.integers(min_value=0, max_value=1),
    "client": st.sampled_from(CLIENTS),
    "wait_minutes": st.sampled_from([0] * 16 + [1, 7, 16, 61, 60 * 24]),  # mostly bursts, sometimes a pause
})


def answer_of(replicas: Replicas, world: World, m: dict[str, Any], page: str, target: str) -> str:
    """What is typed: the real secret (the subject), or one of the attacker's guesses, in some spelling."""
    if m["who"] == "subject":
        code = world.secret(replicas, page, target)
    else:
        reference = world.access if target == world.token else target
        code = {
            "random": m["random"],
            "reference": reference,
            "own identity code": replicas.identity.request_code(world.own),
            "own download code": replicas.links.code(world.own_token),
            "other family": (replicas.links.code(world.token) if page == "verify"
                             else replicas.identity.request_code(world.access)),
            "near miss": near_miss(world.secret(replicas, page, target), m["random"]),
        }[m["guess"]]
    return code if m["guess"] == "reference" and m["who"] == "attacker" else SPELLINGS[m["spelling"]](code)


def near_miss(secret: str, noise: str) -> str:
    """``secret`` with its last character changed (never to itself)."""
    last = CODE_ALPHABET.index(secret[-1])
    return secret[:-1] + CODE_ALPHABET[(last + 1 + CODE_ALPHABET.index(noise[0]) % 30) % len(CODE_ALPHABET)]


def is_the_secret(typed: str, secret: str) -> bool:
    return typed.strip().upper().translate(_SEPARATORS) == secret


@dataclass
class Model:
    wrong: Counter[tuple[str, str]] = field(default_factory=Counter)  # (page, request) -> wrong answers judged
    looked_at: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)  # (page, client) -> times
    everyone: dict[str, list[datetime]] = field(default_factory=dict)  # page -> times
    seen: Counter[str] = field(default_factory=Counter)

    def closed(self, page: str, request: str) -> bool:
        return self.wrong[(page, request)] >= MAX_WRONG


def play(replicas: Replicas, world: World, moves: list[dict[str, Any]], model: Model) -> None:
    for m in moves:
        replicas.clock.now += timedelta(minutes=m["wait_minutes"])
        page = m["page"]
        if page == "verify":
            request = {"access": world.access, "erasure": world.erasure, "unknown": world.unknown}[m["target"]]
            target = request
        else:  # the link leaked: only the victim's download is attacked
            request, target = world.access, world.token
        typed = answer_of(replicas, world, m, page, target)
        secret = world.secret(replicas, page, target)
        right = is_the_secret(typed, secret)
        confirmations = len(replicas.confirmations.calls)
        downloads = len(replicas.downloads)
        closed_before = model.closed(page, request)
        if page == "verify":
            response = replicas.post(m["replica"], m["client"], "/verify", {"reference": request, "code": typed})
        else:
            response = replicas.post(m["replica"], m["client"], f"/exports/{target}",
                                     {"answer": typed, "form": replicas.links.form_token(target)})
        status = response.status_code
        model.seen[f"{page} {m['who']} {status}"] += 1
        if status != 429:  # looked at (not throttled, not locked): counted by the throttles
            model.looked_at.setdefault((page, m["client"]), []).append(replicas.clock.now)
            model.everyone.setdefault(page, []).append(replicas.clock.now)
        succeeded = len(replicas.confirmations.calls) > confirmations or len(replicas.downloads) > downloads
        if succeeded:
            # No confirmation and no download without the real secret, nor past the cap, nor for a link-only or
            # unknown request.
            assert right, (page, m, typed)
            assert not closed_before, ("succeeded past the cap", page, m)
            assert page == "exports" or request == world.access, ("confirmed a request that takes no code", m)
            assert status == 200 and (page == "verify" or response.content == ZIP)
            continue
        assert status in (403, 429), (status, m, response.text[:300])
        if status == 429:
            assert response.headers["retry-after"].isdigit()
            continue
        if page == "exports" and closed_before:
            assert "too many wrong codes" in response.text or "trop de codes" in response.text
        else:
            assert 'role="alert"' in response.text  # the same "does not match" answer, closed or not
        # The real code of a request that takes codes fails only once the cap is reached.
        takes_codes = request == world.access
        assert not (right and takes_codes and not closed_before), ("the real code was refused", page, m)
        if request in replicas.known and not closed_before:
            model.wrong[(page, request)] += 1
        for key in ((page, world.access), (page, world.erasure)):
            expected = min(model.wrong[key], MAX_WRONG)
            assert replicas.guards[m["replica"] ^ 1].wrong_answers(*key) == (expected, expected >= MAX_WRONG), key
        assert replicas.guards[0].wrong_answers(page, world.unknown) == (0, False)  # made up: never capped


def check_throttles(model: Model) -> None:
    def most_in_a_window(times: list[datetime]) -> int:
        times = sorted(times)
        return max((sum(1 for t in times[i:] if t < start + THROTTLE.window) for i, start in enumerate(times)),
                   default=0)

    for (page, client), times in model.looked_at.items():
        assert most_in_a_window(times) <= THROTTLE.per_client, (page, client)
    for page, times in model.everyone.items():
        assert most_in_a_window(times) <= THROTTLE.overall, page


def test_no_confirmation_or_download_without_the_real_code_within_the_cap(replicas: Replicas) -> None:
    epochs = itertools.count()
    seen: Counter[str] = Counter()

    # Seeded (derandomize) and without shrinking: a failure shows its whole sequence at once, in seconds.
    @settings(max_examples=15, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(moves=st.lists(move, min_size=60, max_size=150))
    def run(moves: list[dict[str, Any]]) -> None:
        epoch = next(epochs)
        replicas.clock.now = START + EPOCH * epoch  # past every window of the earlier examples
        model = Model()
        world = new_world(replicas, epoch)
        play(replicas, world, moves, model)
        check_throttles(model)
        seen.update(model.seen)

    run()
    # The run reached what it is about: answers judged wrong, caps reached, throttles and locks, real codes served.
    assert seen["verify attacker 403"] and seen["exports attacker 403"], seen
    assert seen["verify attacker 429"] and seen["exports attacker 429"], seen
    assert seen["verify subject 200"] and seen["exports subject 200"], seen
    assert not seen["verify attacker 200"] and not seen["exports attacker 200"], seen  # no guess ever won
    assert any(page == "verify" for _, page, _ in replicas.locked_calls), replicas.locked_calls
    assert any(page == "exports" for _, page, _ in replicas.locked_calls), replicas.locked_calls


def test_a_request_is_closed_after_the_cap_even_with_the_lockouts_served_on_both_replicas(replicas: Replicas) -> None:
    """The lasting cap, step by step: five wrong codes on replica a, the lockout served, five on replica b; then
    the real code fails on both, the operator hook ran once, and the download page of the same request is not
    affected (its own count)."""
    world = new_world(replicas, 1000)
    replicas.clock.now = START + EPOCH * 1000
    code = replicas.identity.request_code(world.access)
    wrong = "22222222" if code != "22222222" else "33333333"
    for n in range(MAX_WRONG):
        if n and n % 5 == 0:
            replicas.clock.now += timedelta(minutes=16)  # the lockout of the last five is served
        response = replicas.post(n // 5, CLIENTS[n % 3], "/verify", {"reference": world.access, "code": wrong})
        assert response.status_code == 403, (n, response.status_code)
    replicas.clock.now += timedelta(minutes=16)
    for replica in (0, 1):
        response = replicas.post(replica, CLIENTS[2], "/verify", {"reference": world.access, "code": code})
        assert response.status_code == 403 and 'role="alert"' in response.text
    assert replicas.confirmations.calls == []
    assert [(r, p) for r, p, _ in replicas.locked_calls] == [(world.access, "verify")]
    downloaded = replicas.post(1, CLIENTS[0], f"/exports/{world.token}",
                               {"answer": format_code(replicas.links.code(world.token)),
                                "form": replicas.links.form_token(world.token)})
    assert downloaded.status_code == 200 and downloaded.content == ZIP
