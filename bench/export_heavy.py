"""Benchmark: exporting the demo's heavy customer (10,000 WooCommerce orders, 2,000 Stripe charges).

Prints two figures the connectors issue sets targets for:
- the export's peak RSS growth in the process running it (target: under 150 MB), and
- its time as a ratio of the sandboxes' own paging time (issue 19's target: within 1.2x), both exports running in
  parallel as the worker runs them, each against the same paging done bare (httpx, no processing);
and how late the export's event loop woke a task sleeping 5 ms, at worst and at the 99th percentile: what every
other activity and workflow task of the worker would wait while the export holds the loop.

The sandboxes run in their own processes so their memory and CPU are not counted. Ratios, medians of
several runs: the machine is shared and noisy. Each run also prints when each connector finished.

What bare paging does not pay: the Stripe export makes 53 calls (customer search and lookups, 20 pages of
charges, 20 of payment intents, invoices, credit notes, quotes, subscriptions, payment methods, setup intents,
Checkout Sessions twice) where bare paging lists the 20 pages of charges only, and the connector keeps Stripe's
test-mode limit (25 calls per second; with the configuration's margin, 25 per 1.1 s): 53 calls need three windows,
so the Stripe export takes at least 2.2 s, which is Stripe's limit, not our processing. ``--stripe-rate 100``
(live mode's 100 per second; each endpoint's 25 per second is not reached here) shows the export without that
floor. The WooCommerce export makes 202 calls where bare paging makes 101: the search for orders billed to the
address from other accounts pages through the subject's own orders too; it runs beside the listing of her orders.
Each run also pages the shop bare with both of those listings (the export's own calls, one page at a time each).
The WooCommerce connector asks for up to ``PAGES_AT_ONCE`` (4) pages at once across its two listings; bare paging
asks for one at a time, so the ratio holds what asking ahead saves as well as what processing costs. On the
sandbox, which answers a page in a few milliseconds, the export is bound by its own CPU (parsing, sealing, the
Stripe export beside it on the same event loop). ``--shop-latency-ms 100`` makes the shop answer each request that
late, as WordPress building 100 orders in PHP does: there the pages asked ahead count most.
``--stripe-latency-ms 100`` makes the Stripe sandbox answer that late, as ``api.stripe.com`` does from a worker
elsewhere: the export's 53 calls then weigh against bare paging's 20; the connector pages up to
``DATASETS_AT_ONCE`` (4) datasets at once, bare paging lists the charges one page at a time.
Run: ``.venv/bin/python bench/export_heavy.py [--runs 3] [--stripe-rate 25] [--put-latency-ms 30]
[--shop-latency-ms 100] [--stripe-latency-ms 100]``
(``DSR_STORAGE_URL`` chooses where the export is written; default: a temporary folder). ``--put-latency-ms`` waits
that long in every object PUT, as a remote object store's round trip would (S3 from the same region: tens of
milliseconds): moto's S3 server on these two cores costs CPU instead, which hides what the chunks stored behind the
connector (``ChunkStorer``) save.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EMAIL = "marie.lefevre@example.com"
WOO_KEY, WOO_SECRET, STRIPE_KEY = "ck_bench", "cs_bench", "sk_test_bench"

SHOP = textwrap.dedent(f"""
    import asyncio, sys
    from dsr.web.serve import serve_app
    from sandbox.faults import Faults
    from sandbox.woocommerce import WooState, woocommerce_app
    async def main():
        state = WooState()
        c = state.add_customer({EMAIL!r}, "Marie", "Lefevre", billing={{"email": {EMAIL!r}, "first_name": "Marie"}})
        state.bulk_orders(c["id"], 10_000)
        slow = Faults(delay_seconds=float(sys.argv[1]) / 1000)  # each answer waits this long first
        server = await serve_app(woocommerce_app(state, consumer_key={WOO_KEY!r}, consumer_secret={WOO_SECRET!r},
                                                 faults=slow), port=0)
        print(server.port, flush=True)
        await server.wait()
    asyncio.run(main())
""")

EXPORT = textwrap.dedent("""
    import asyncio, json, resource, sys, tempfile, time
    from pathlib import Path
    from temporalio.testing import ActivityEnvironment
    from activities.connectors import ConnectorActivities
    from connectors.http import RateLimiter
    from connectors.stripe import StripeConnector
    from connectors.woocommerce import WooCommerceConnector
    import os
    from dsr.store import store_at
    from dsr.store.exports import ExportStore
    from dsr.domain.model import ConnectorTask, RequestKind, Subject
    from tests.harness import TEST_KEYRING

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    async def main(shop_url, stripe_url, email):
        storage = os.environ.get("DSR_STORAGE_URL") or Path(tempfile.mkdtemp(prefix="bench-exports-")).as_uri()
        store = ExportStore(store_at(storage), TEST_KEYRING)
        latency = float(os.environ.get("BENCH_PUT_LATENCY_MS") or 0) / 1000
        if latency:  # a remote object store's round trip, without its CPU on these cores
            put = store.objects.put
            def slow_put(key, data, **options):
                time.sleep(latency)
                put(key, data, **options)
            store.objects.put = slow_put
        connectors = [
            WooCommerceConnector("woocommerce", consumer_key=sys.argv[4], consumer_secret=sys.argv[5],
                                 base_url=shop_url, rate_limit=RateLimiter(1000, 1)),
            StripeConnector("stripe", api_key=sys.argv[6], base_url=stripe_url,
                            rate_limit=RateLimiter(int(sys.argv[7]), 1.1)),
        ]
        fan_out = ConnectorActivities(connectors, store)
        from worker import settle_heap
        settle_heap()  # as the worker does once started: the collector's full passes skip what lives as long as it
        before = rss_kb()
        start = time.perf_counter()
        each = {}

        async def timed(c):
            outcome = await ActivityEnvironment().run(fan_out.run_connector, ConnectorTask(
                request_id="dsr-2026-11-BENCH1", connector=c.name, kind=RequestKind.ACCESS,
                subject=Subject(email=email)))
            each[c.name] = time.perf_counter() - start
            return outcome

        lags = []

        async def ticker():
            # What every other activity and workflow task of a worker would feel: how late a 5 ms sleep wakes.
            while True:
                asked = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - asked - 0.005)

        ticking = asyncio.create_task(ticker())
        outcomes = await asyncio.gather(*(timed(c) for c in connectors))
        seconds = time.perf_counter() - start
        ticking.cancel()
        lags.sort()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for c in connectors:
            await c.aclose()
        print(json.dumps({"seconds": seconds, "each": each, "rss_before_kb": before, "peak_kb": peak,
                          "lag_max_ms": 1000 * lags[-1], "lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))],
                          "exported": {o.connector: o.counts.get("exported", 0) for o in outcomes}}))

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
""")


async def bare_paging(shop_url: str, stripe_url: str, stripe_customer: str, *, billed: bool = False,
                      ) -> dict[str, float]:
    """The sandboxes' own paging time: the same pages fetched bare and in parallel, nothing processed; seconds in
    all and per shop. ``billed``: the shop's paging also makes the WooCommerce export's other listing, the search
    for orders billed to the address (slim, as the connector asks it), beside the subject's orders: the export's
    own calls, made bare."""
    import secrets

    import httpx

    from connectors.woocommerce import oauth_signature

    def signed(path: str, params: dict[str, str]) -> dict[str, str]:
        """OAuth 1.0a, as the shop asks over plain HTTP (Basic is for HTTPS only), signed like the connector."""
        oauth = {**params, "oauth_consumer_key": WOO_KEY, "oauth_nonce": secrets.token_hex(16),
                 "oauth_signature_method": "HMAC-SHA256", "oauth_timestamp": str(int(time.time()))}
        return {**oauth, "oauth_signature": oauth_signature("GET", shop_url + path, oauth, WOO_SECRET)}

    async def pages(client: httpx.AsyncClient, params: dict[str, str]) -> None:
        page, total = 1, 1
        while page <= total:
            path = "/wp-json/wc/v3/orders"
            r = await client.get(path, params=signed(path, {
                **params, "per_page": "100", "page": str(page), "orderby": "id", "order": "asc"}))
            total = int(r.headers["X-WP-TotalPages"])
            r.json()
            page += 1

    async def shop() -> None:
        async with httpx.AsyncClient(base_url=shop_url, timeout=60) as client:
            path = "/wp-json/wc/v3/customers"
            customers = (await client.get(path, params=signed(path, {"email": EMAIL}))).json()
            listings = [pages(client, {"customer": str(customers[0]["id"])})]
            if billed:
                listings.append(pages(client, {"search": EMAIL, "_fields": "id,customer_id,billing.email"}))
            await asyncio.gather(*listings)
        seconds["woocommerce"] = time.perf_counter() - start

    async def stripe() -> None:
        headers = {"Authorization": f"Bearer {STRIPE_KEY}"}
        async with httpx.AsyncClient(base_url=stripe_url, headers=headers, timeout=60) as client:
            after = None
            while True:
                params: dict[str, str | int] = {"customer": stripe_customer, "limit": 100}
                if after:
                    params["starting_after"] = after
                body = (await client.get("/v1/charges", params=params)).json()
                if not body["data"]:
                    break
                after = body["data"][-1]["id"]
                if not body.get("has_more"):
                    break
        seconds["stripe"] = time.perf_counter() - start

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    await asyncio.gather(shop(), stripe())
    seconds["total"] = time.perf_counter() - start
    return seconds


async def main(runs: int, stripe_rate: int, latency_ms: float, shop_latency_ms: float,
               stripe_latency_ms: float) -> None:
    from sandbox.stripe import StripeSandbox, seed_customer

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shop = subprocess.Popen([sys.executable, "-c", SHOP, str(shop_latency_ms)], env=env, stdout=subprocess.PIPE,
                            cwd=ROOT)
    stripe = StripeSandbox(api_key=STRIPE_KEY).start()
    try:
        assert shop.stdout is not None
        shop_url = f"http://127.0.0.1:{int(shop.stdout.readline())}"
        customer = await seed_customer(stripe.url, STRIPE_KEY, email=EMAIL, name="Marie Lefevre", charges=2000)
        stripe.faults.delay_seconds = stripe_latency_ms / 1000  # each answer waits this long first (seeded without)
        await bare_paging(shop_url, stripe.url, customer)  # warm both servers once
        ratios, growths, lags, rows, shop_ratios = [], [], [], [], []
        for run in range(1, runs + 1):
            bare = (await bare_paging(shop_url, stripe.url, customer))["total"]
            billed = (await bare_paging(shop_url, stripe.url, customer, billed=True))["woocommerce"]
            done = subprocess.run([sys.executable, "-c", EXPORT, shop_url, stripe.url, EMAIL, WOO_KEY, WOO_SECRET,
                                   STRIPE_KEY, str(stripe_rate)], env={**env, "BENCH_PUT_LATENCY_MS": str(latency_ms)},
                                  cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = result["seconds"] / bare
            growth = (result["peak_kb"] - result["rss_before_kb"]) / 1024
            ratios.append(ratio)
            growths.append(growth)
            lags.append(result["lag_max_ms"])
            shop_ratios.append(result["each"]["woocommerce"] / billed)
            rows.append(f"run {run}: bare paging {bare:.2f} s, export {result['seconds']:.2f} s "
                        f"(x{ratio:.2f}; WooCommerce {result['each']['woocommerce']:.2f} s, "
                        f"x{shop_ratios[-1]:.2f} of its own calls made bare in {billed:.2f} s, "
                        f"Stripe {result['each']['stripe']:.2f} s), RSS growth {growth:.0f} MB, "
                        f"event loop late by up to {result['lag_max_ms']:.0f} ms "
                        f"(99th percentile {result['lag_p99_ms']:.0f} ms), "
                        f"exported {result['exported']}")
        print("\n".join(rows))
        print(f"median: export time x{statistics.median(ratios):.2f} of bare paging (issue 19's target: 1.2), "
              f"peak RSS growth {statistics.median(growths):.0f} MB (target < 150), event loop late by up to "
              f"{statistics.median(lags):.0f} ms; the WooCommerce export x{statistics.median(shop_ratios):.2f} of "
              f"its own calls (the billed search too) made bare")
    finally:
        stripe.stop()
        shop.terminate()
        shop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stripe-rate", type=int, default=25,
                        help="the Stripe connector's limit per 1.1 s (25: Stripe's test mode, as the bench's key)")
    parser.add_argument("--put-latency-ms", type=float, default=0,
                        help="wait this long in each object PUT: a remote object store's round trip (S3 in the same "
                             "region: tens of ms), which moto on these cores does not have")
    parser.add_argument("--shop-latency-ms", type=float, default=0,
                        help="the shop answers each request this late: WordPress building a page of 100 orders in PHP "
                             "(the sandbox answers in a few ms)")
    parser.add_argument("--stripe-latency-ms", type=float, default=0,
                        help="Stripe answers each request this late: api.stripe.com from a worker elsewhere")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.stripe_rate, args.put_latency_ms, args.shop_latency_ms, args.stripe_latency_ms))
