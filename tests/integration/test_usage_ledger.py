"""The usage ledger on real processes: secrets, config, two routers, a provider worker (the
mock) and an HTTP gateway, against a private nats-server without identities (so the test's
own connection may read the stream and publish crafted records).

Every final answer, success or error, streamed or not, has exactly one record with the
usage the client was told (cached, cache-write and reasoning tokens included), each
router numbers its own records, ``modelbus usage`` adds them up exactly and reports a
missing number, and no prompt text reaches the stream's files.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import headers as H
from shared.client import ModelbusClient, Reply
from shared.natsserver import EmbeddedNats
from shared.subjects import USAGE_RECORDS, USAGE_STREAM
from shared.usage import UsageRecord, decode_records, usage_record_encoder
from tests.conftest import ROOT, run
from tests.integration.procs import Services, services, start_gateway, write_gateway_keys

pytestmark = pytest.mark.timeout(180)

CONFIG = Path(__file__).with_name("configs") / "usage.yaml"
GATEWAY_KEY = "mb-usage-test-" + uuid.uuid4().hex


class Ledger:
    def __init__(self, s: Services, gateway_url: str, store: Path) -> None:
        self.s, self.url, self.gateway_url, self.store = s, s.nats_url, gateway_url, store


@pytest.fixture(scope="module")
def ledger(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    home = tmp_path_factory.mktemp("usage-home")
    keys = home / "gateway-keys.json"
    write_gateway_keys(keys, {"team-a": GATEWAY_KEY})
    with services(nats_server.url, home, CONFIG, routers=2) as s:
        # The gateway's own inbox prefix, as under `modelbus up`: the one routers trust Modelbus-Key from.
        url = start_gateway(s, keys, env={"MODELBUS_INBOX_PREFIX": "_INBOX_gateway"})
        yield Ledger(s, url, nats_server.data_dir / "jetstream")


async def _records(url: str, *, wanted: set[str] | None = None, timeout_s: float = 10.0) -> list[UsageRecord]:
    """Every record in the ledger; with ``wanted``, wait until those request ids have one."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while True:
            records: list[UsageRecord] = []
            last = (await js.stream_info(USAGE_STREAM)).state.last_seq
            if last:
                sub = await js.subscribe(
                    USAGE_RECORDS,
                    stream=USAGE_STREAM,
                    ordered_consumer=True,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
                )
                while True:
                    msg = await sub.next_msg(timeout=5)
                    records.extend(decode_records(msg.data))
                    if msg.metadata.sequence.stream >= last:
                        break
                await sub.unsubscribe()
            if wanted is None or wanted <= {r.request_id for r in records}:
                return records
            if time.monotonic() > deadline:
                missing = wanted - {r.request_id for r in records}
                raise AssertionError(f"no usage record for {sorted(missing)} after {timeout_s}s")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


def records_for(url: str, ids: set[str]) -> dict[str, list[UsageRecord]]:
    found: dict[str, list[UsageRecord]] = {}
    for r in run(_records(url, wanted=ids)):
        if r.request_id in ids:
            found.setdefault(r.request_id, []).append(r)
    return found


async def _ask(url: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None) -> list[Reply]:
    client = await ModelbusClient.connect(url)
    try:
        return list(
            await asyncio.gather(
                *(
                    client.request_raw(
                        b, headers={**(headers or {}), H.REQUEST_ID: f"usage-{uuid.uuid4().hex}"}, timeout=30
                    )
                    for b in bodies
                )
            )
        )
    finally:
        await client.close()


def ask(url: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None) -> list[Reply]:
    return run(_ask(url, bodies, headers))


def usage_cli(ledger: Ledger, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": ledger.url, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--data-dir", str(ledger.s.home / "cli"), "usage", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_answer_has_one_record_with_the_usage_the_client_got_including_cached_tokens(ledger: Ledger) -> None:
    replies = ask(
        ledger.url, [{"model": "cached-alias", "messages": [{"role": "user", "content": "count my cache"}]}] * 6
    )
    assert all(r.status == 200 for r in replies), [r.body for r in replies]
    ids = {r.headers[H.REQUEST_ID] for r in replies}
    found = records_for(ledger.url, ids)
    for reply in replies:
        (record,) = found[reply.headers[H.REQUEST_ID]]
        usage = json.loads(reply.body)["usage"]
        assert "cache_write_tokens" not in usage.get("prompt_tokens_details", {})  # OpenAI clients see OpenAI usage
        assert record.status == 200 and record.usage_reported
        assert record.input_tokens == usage["prompt_tokens"]
        assert record.output_tokens == usage["completion_tokens"]
        assert record.cache_read_tokens == usage["prompt_tokens_details"]["cached_tokens"] == 5
        assert record.cache_write_tokens == 2
        assert record.reasoning_tokens == usage["completion_tokens_details"]["reasoning_tokens"] == 3
        assert (record.route, record.endpoint, record.provider, record.model) == (
            "cached-alias",
            "cached",
            "mock",
            "cached-model",
        )
        assert record.attempts == 1 and record.cost is None and record.latency_ms > 0
        assert record.router == reply.headers[H.ROUTER]


def test_an_error_answer_has_a_record_with_its_status_and_code(ledger: Ledger) -> None:
    bad, unknown = ask(
        ledger.url,
        [
            {"model": "broken-alias", "messages": [{"role": "user", "content": "fail me"}]},
            {"model": "no-such-model", "messages": [{"role": "user", "content": "route me"}]},
        ],
    )
    assert (bad.status, unknown.status) == (400, 404)
    found = records_for(ledger.url, {bad.headers[H.REQUEST_ID], unknown.headers[H.REQUEST_ID]})
    (failed,) = found[bad.headers[H.REQUEST_ID]]
    assert (failed.status, failed.endpoint, failed.attempts, failed.usage_reported) == (400, "broken", 1, False)
    assert failed.error_code == json.loads(bad.body)["error"]["code"]
    (unrouted,) = found[unknown.headers[H.REQUEST_ID]]
    assert (unrouted.status, unrouted.endpoint, unrouted.attempts) == (404, None, 0)
    assert unrouted.error_code == json.loads(unknown.body)["error"]["code"]


def test_a_stream_has_one_record_with_its_time_to_first_token(ledger: Ledger) -> None:
    async def stream() -> str:
        client = await ModelbusClient.connect(ledger.url)
        request_id = f"usage-stream-{uuid.uuid4().hex}"
        try:
            body = {
                "model": "plain",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "stream four words please"}],
            }
            chunks = [c async for c in client.stream(body, headers={H.REQUEST_ID: request_id}, timeout=30)]
            assert chunks[-1].usage is not None
        finally:
            await client.close()
        return request_id

    request_id = run(stream())
    (record,) = records_for(ledger.url, {request_id})[request_id]
    assert record.stream and record.status == 200 and record.usage_reported
    assert record.ttft_ms is not None and 60 <= record.ttft_ms <= record.latency_ms
    assert record.input_tokens == 4 and record.output_tokens > 0


def test_each_of_two_routers_numbers_its_own_records_without_a_gap(ledger: Ledger) -> None:
    replies = ask(ledger.url, [{"model": "plain", "messages": [{"role": "user", "content": "hi"}]}] * 40)
    assert all(r.status == 200 for r in replies)
    records = run(_records(ledger.url, wanted={r.headers[H.REQUEST_ID] for r in replies}))
    by_router: dict[str, list[int]] = {}
    for r in records:
        if not r.router.startswith("crafted"):
            by_router.setdefault(r.router, []).append(r.seq)
    assert len(by_router) == 2, by_router.keys()
    for seqs in by_router.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))


def test_the_gateway_key_name_is_recorded_and_no_client_can_claim_one(ledger: Ledger) -> None:
    response = httpx.post(
        f"{ledger.gateway_url}/v1/chat/completions",
        json={"model": "plain", "messages": [{"role": "user", "content": "via http"}]},
        headers={"authorization": f"Bearer {GATEWAY_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    via_gateway = response.headers["x-request-id"]
    (forged,) = ask(ledger.url, [{"model": "plain", "messages": [{"role": "user", "content": "x"}]}], {H.KEY: "team-a"})
    found = records_for(ledger.url, {via_gateway, forged.headers[H.REQUEST_ID]})
    (gw,) = found[via_gateway]
    assert (gw.caller, gw.key) == ("gateway", "team-a")
    (claimed,) = found[forged.headers[H.REQUEST_ID]]
    assert claimed.key is None
    assert GATEWAY_KEY not in json.dumps([msgspec_builtins(r) for r in run(_records(ledger.url))])


def msgspec_builtins(record: UsageRecord) -> Any:
    return json.loads(usage_record_encoder.encode(record))


def test_modelbus_usage_totals_equal_the_sum_of_the_records(ledger: Ledger) -> None:
    ask(
        ledger.url,
        [{"model": m, "messages": [{"role": "user", "content": "sum"}]} for m in ("cached-alias", "plain")] * 3,
    )
    time.sleep(0.3)  # let the routers' background publishes land before both reads
    records = run(_records(ledger.url))
    result = usage_cli(ledger, "--by", "model", "--since", "1h", "-o", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"]["requests"] == len(records)
    for kind in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
        expected = sum(getattr(r, kind) for r in records)
        assert report["total"]["tokens"][kind] == expected
        assert sum(g["tokens"][kind] for g in report["groups"]) == expected
    assert sum(g["requests"] for g in report["groups"]) == len(records)
    assert report["total"]["errors"] == sum(1 for r in records if r.status != 200)
    # No price in this configuration: every answered request's cost is unknown (only requests no
    # provider was asked, such as an unknown model's, cost a known 0; test_usage_ledger_costs.py).
    unknown = sum(1 for r in records if r.cost is None)
    assert unknown == sum(1 for r in records if r.attempts > 0)
    assert report["total"]["cost"] == (None if unknown == len(records) else "0")
    assert report["total"]["cost_unknown_requests"] == unknown
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["cached-model"]["requests"] == sum(1 for r in records if r.model == "cached-model")
    table = usage_cli(ledger, "--by", "alias", "--since", "24h")
    assert table.returncode == 0 and "cached-alias" in table.stdout and "unknown" in table.stdout


def test_a_missing_record_number_is_reported_as_a_gap_of_its_router(ledger: Ledger) -> None:
    router = f"crafted-{uuid.uuid4().hex[:6]}"

    async def publish() -> None:
        nc = await nats.connect(ledger.url)
        js = nc.jetstream()
        for seq in (1, 2, 4, 5, 9):
            record = UsageRecord(
                request_id=f"crafted-{seq}", time_ms=int(time.time() * 1000), router=router, seq=seq, status=200
            )
            await js.publish(USAGE_RECORDS, usage_record_encoder.encode(record))
        await nc.close()

    run(publish())
    result = usage_cli(ledger, "--since", "1h", "-o", "json")
    assert result.returncode == 0, result.stderr
    routers = {r["router"]: r for r in json.loads(result.stdout)["routers"]}
    assert routers[router]["missing_ranges"] == [[3, 3], [6, 8]] and routers[router]["missing"] == 4
    assert all(r["missing"] == 0 for name, r in routers.items() if not name.startswith("crafted"))
    table = usage_cli(ledger, "--since", "1h")
    assert f"router {router} is missing 4 record(s): seq 3, 6-8" in table.stdout


def test_no_prompt_or_completion_text_reaches_the_ledger_files(ledger: Ledger) -> None:
    marker = f"secretprompt{uuid.uuid4().hex}"
    (reply,) = ask(ledger.url, [{"model": "plain", "messages": [{"role": "user", "content": marker}]}])
    assert reply.status == 200 and marker.encode() in reply.body  # the mock echoes it: the completion has it too
    request_id = reply.headers[H.REQUEST_ID]
    records_for(ledger.url, {request_id})
    files = [p for p in ledger.store.rglob("*") if p.is_file() and USAGE_STREAM in str(p)]
    assert files, "the usage stream has no files in the store"
    deadline = time.monotonic() + 5
    while not any(request_id.encode() in p.read_bytes() for p in files):  # the record is on disk ...
        assert time.monotonic() < deadline, "the record never reached the stream's files"
        time.sleep(0.05)
        files = [p for p in ledger.store.rglob("*") if p.is_file() and USAGE_STREAM in str(p)]
    assert not any(marker.encode() in p.read_bytes() for p in files)  # ... and the prompt is not
