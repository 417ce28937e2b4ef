"""The HTTP contract end to end: real server, real reconciler, the fake agent behind it."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import web

from sidecar.backends.agent import AgentBackend
from sidecar.clock import SystemClock
from sidecar.machine import Policy
from sidecar.service import ProtectionService
from sidecar.web import Api, build_app
from tests.fakes import agent as fa
from tests.fakes.agent import FakeAgent
from tests.fakes.clock import FakeClock
from tests.sidecar_fixture import running_sidecar
from tests.support import eventually

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
async def sidecar(aiohttp_client, agent):
    async with running_sidecar(aiohttp_client, agent) as running:
        yield running


@pytest.fixture
async def fake_time(aiohttp_client):
    """A sidecar and agent sharing a fake clock, for timer behaviour without sleeping."""
    clock = FakeClock()
    fake = FakeAgent(clock)
    await fake.start()
    fake.add_task()
    async with running_sidecar(aiohttp_client, fake, clock=clock) as running:
        yield running, fake, clock
    await fake.close()


def enable_puts(agent: FakeAgent) -> list[dict]:
    return [p for p in agent.puts() if p["ProtectionEnabled"]]


async def test_plain_busy_idle_state_gives_boolean_semantics(sidecar, agent):
    """`curl -X POST /busy`, `/idle`, `/state`: the default lease, protection confirmed."""
    status, body = await sidecar.post("/busy")
    assert status == 200
    assert body == {
        "lease": "default",
        "protected": True,
        "expires_at": body["expires_at"],
        "leases": 1,
    }
    assert RFC3339.match(body["expires_at"])
    assert agent.puts() == [{"ProtectionEnabled": True, "ExpiresInMinutes": 60}]

    status, state = await sidecar.get("/state")
    assert status == 200
    assert state["busy"] is True
    assert [lease["lease"] for lease in state["leases"]] == ["default"]
    assert state["protection"]["enabled"] is True
    assert state["protection"]["backend"] == "agent"
    assert state["protection"]["calls"] == 2  # the start-up read and the enable
    assert state["protection"]["last_error"] is None
    assert (state["draining"], state["drain_deadline"]) == (False, None)

    assert await sidecar.post("/idle") == (200, {"released": True, "leases": 0})
    assert await sidecar.post("/idle") == (200, {"released": False, "leases": 0})
    _, state = await sidecar.get("/state")
    assert (state["busy"], state["leases"]) == (False, [])


async def test_posting_a_lease_again_is_a_heartbeat(sidecar, agent):
    for _ in range(3):
        status, body = await sidecar.post("/busy", {"lease": "job-1", "ttl_seconds": 30})
        assert (status, body["leases"]) == (200, 1)
    assert len(enable_puts(agent)) == 1


async def test_concurrent_leases_ref_count(sidecar, agent):
    """Two jobs: protection stays while either runs, with a single enable."""
    await sidecar.post("/busy", {"lease": "a"})
    _, body = await sidecar.post("/busy", {"lease": "b"})
    assert body["leases"] == 2
    assert await sidecar.post("/idle", {"lease": "a"}) == (200, {"released": True, "leases": 1})
    _, state = await sidecar.get("/state")
    assert state["busy"] is True
    assert len(enable_puts(agent)) == 1


async def test_idle_grace_then_disable(fake_time):
    """After the grace, exactly one disable; a job within the grace makes no call."""
    sidecar, agent, clock = fake_time
    await sidecar.post("/busy", {"lease": "a"})
    await sidecar.post("/idle", {"lease": "a"})
    clock.advance(9)
    await sidecar.time_moved()
    await sidecar.post("/busy", {"lease": "b"})
    await sidecar.post("/idle", {"lease": "b"})
    assert agent.puts() == [{"ProtectionEnabled": True, "ExpiresInMinutes": 60}]
    clock.advance(10)
    await sidecar.time_moved()
    assert agent.puts()[-1] == {"ProtectionEnabled": False}
    _, state = await sidecar.get("/state")
    assert state["protection"]["enabled"] is False


async def test_ttl_expiry_through_the_api(fake_time):
    sidecar, _agent, clock = fake_time
    await sidecar.post("/busy", {"lease": "w", "ttl_seconds": 5})
    _, state = await sidecar.get("/state")
    assert state["leases"][0]["ttl_seconds"] == 5
    clock.advance(5.5)
    await sidecar.time_moved()
    _, state = await sidecar.get("/state")
    assert state["busy"] is False


async def test_a_retryable_fault_is_retried_before_answering(sidecar, agent):
    """The agent's rate limiter refuses the first two enables: the sidecar retries, and
    /busy answers 200 once the third is confirmed, within its wait."""
    agent.fail(fa.rate_limited(), times=2)
    status, body = await sidecar.post("/busy", {"lease": "j"})
    assert (status, body["protected"]) == (200, True)
    assert [c.status for c in agent.calls if c.method == "PUT"] == [429, 429, 200]
    _, state = await sidecar.get("/state")
    assert state["protection"]["last_error"] is None
    text = await (await sidecar.client.get("/metrics")).text()
    assert "task_protection_retries_total 2.0" in text
    assert 'task_protection_backend_calls_total{op="enable",outcome="retryable"} 2.0' in text


async def test_a_refusal_answers_503_at_once_and_keeps_the_lease(sidecar, agent):
    """TASK_NOT_VALID: no point waiting 10 s; 503 ProtectionUnavailable, lease kept, reported."""
    agent.fail_always(fa.failure("TASK_NOT_VALID", None, methods=("PUT",)))
    status, body = await sidecar.post("/busy", {"lease": "j"})
    assert status == 503
    assert body["error"]["code"] == "ProtectionUnavailable"
    assert "TASK_NOT_VALID" in body["error"]["message"]
    assert (body["lease"], body["protected"], body["leases"]) == ("j", False, 1)
    _, state = await sidecar.get("/state")
    assert state["protection"]["last_error"]["code"] == "TASK_NOT_VALID"
    assert state["protection"]["last_error"]["retryable"] is False
    assert state["busy"] is True


async def test_wait_zero_does_not_wait(aiohttp_client, agent):
    """wait_seconds 0 answers before the backend does; the sidecar still enables."""
    agent.fail(fa.delay(0.3, methods=("PUT",)))
    async with running_sidecar(aiohttp_client, agent) as sidecar:
        status, body = await sidecar.post("/busy", {"lease": "j", "wait_seconds": 0})
        assert (status, body["error"]["code"], body["leases"]) == (503, "ProtectionUnavailable", 1)
        await sidecar.settle()
        _, state = await sidecar.get("/state")
        assert state["protection"]["enabled"] is True


async def test_wait_seconds_bounds_the_wait(aiohttp_client, agent):
    agent.fail(fa.delay(2.0, methods=("PUT",)))
    async with running_sidecar(aiohttp_client, agent) as sidecar:
        status, body = await sidecar.post("/busy", {"wait_seconds": 0.2})
        assert status == 503
        assert "not confirmed within 0.2s" in body["error"]["message"]


async def test_draining_refuses_new_leases_but_refreshes_existing(sidecar, agent):
    await sidecar.post("/busy", {"lease": "old"})
    assert (await sidecar.post("/drain"))[0] == 200
    status, body = await sidecar.post("/busy", {"lease": "new"})
    assert (status, body["error"]["code"], body["leases"]) == (503, "Draining", 1)
    assert (await sidecar.post("/busy", {"lease": "old"}))[0] == 200
    _, state = await sidecar.get("/state")
    assert state["draining"] is True
    assert [lease["lease"] for lease in state["leases"]] == ["old"]
    assert (await sidecar.get("/healthz")) == (200, {"status": "ok"})


async def test_too_many_leases_is_429(aiohttp_client, agent):
    async with running_sidecar(aiohttp_client, agent, max_leases=2) as sidecar:
        await sidecar.post("/busy", {"lease": "a"})
        await sidecar.post("/busy", {"lease": "b"})
        status, body = await sidecar.post("/busy", {"lease": "c"})
        assert (status, body["error"]["code"], body["leases"]) == (429, "TooManyLeases", 2)
        assert (await sidecar.post("/busy", {"lease": "a"}))[0] == 200


async def test_release_drops_every_lease(sidecar):
    for name in ("a", "b", "c"):
        await sidecar.post("/busy", {"lease": name})
    assert await sidecar.post("/release") == (200, {"released": 3})
    _, state = await sidecar.get("/state")
    assert state["busy"] is False


async def test_drain_refuses_new_leases_keeps_held_ones_and_does_not_exit(sidecar):
    """POST /drain: what stop detection does, asked for by the app container's wrapper."""
    await sidecar.post("/busy", {"lease": "held"})
    assert await sidecar.post("/drain") == (200, {"draining": True, "leases": 1})
    assert await sidecar.post("/drain") == (200, {"draining": True, "leases": 1})  # idempotent
    status, body = await sidecar.post("/busy", {"lease": "new"})
    assert (status, body["error"]["code"]) == (503, "Draining")
    assert (await sidecar.post("/busy", {"lease": "held"}))[0] == 200
    assert await sidecar.post("/idle", {"lease": "held"}) == (200, {"released": True, "leases": 0})
    await sidecar.settle()
    assert not sidecar.task.done()  # draining without exiting: only a signal ends the process
    _, state = await sidecar.get("/state")
    assert (state["draining"], state["drain_deadline"]) == (True, None)
    status, body = await sidecar.post("/drain", {"now": True})
    assert (status, body["error"]["code"]) == (400, "InvalidRequest")


async def test_token_guards_posts_only(aiohttp_client, agent):
    token = "s3cret-token-0123456789"
    async with running_sidecar(aiohttp_client, agent, token=token) as sidecar:
        status, body = await sidecar.post("/busy")
        assert (status, body["error"]["code"]) == (401, "Unauthorized")
        status, _ = await sidecar.post("/busy", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _ = await sidecar.post("/release")
        assert status == 401
        status, _ = await sidecar.post("/drain")
        assert status == 401
        assert (await sidecar.get("/state"))[1]["draining"] is False
        status, _ = await sidecar.post("/busy", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        assert (await sidecar.get("/state"))[0] == 200


async def test_metrics_expose_the_state(sidecar):
    await sidecar.post("/busy")
    response = await sidecar.client.get("/metrics")
    text = await response.text()
    assert response.status == 200
    assert "task_protection_leases 1.0" in text
    assert "task_protection_protected 1.0" in text
    assert 'task_protection_backend_calls_total{op="enable",outcome="ok"} 1.0' in text
    assert "task_protection_draining 0.0" in text
    assert re.search(r"task_protection_expiry_seconds 3[56]\d\d\.", text)
    assert "task_protection_retries_total 0.0" in text


BAD_BODIES = [
    (b"{", "InvalidRequest", None),
    (b"[1, 2]", "InvalidRequest", None),
    (b'"busy"', "InvalidRequest", None),
    (b'{"lease": "ok", "extra": 1}', "InvalidRequest", "extra"),
    (b'{"lease": 5}', "InvalidRequest", "lease"),
    (b'{"lease": ""}', "InvalidRequest", "lease"),
    (b'{"lease": "has space"}', "InvalidRequest", "lease"),
    (b'{"lease": "' + b"x" * 129 + b'"}', "InvalidRequest", "lease"),
    (b'{"ttl_seconds": "10"}', "InvalidRequest", "ttl_seconds"),
    (b'{"ttl_seconds": 0}', "InvalidRequest", "ttl_seconds"),
    (b'{"ttl_seconds": -1}', "InvalidRequest", "ttl_seconds"),
    (b'{"ttl_seconds": 1e-300}', "InvalidRequest", "ttl_seconds"),  # expired once answered
    (b'{"ttl_seconds": 0.999}', "InvalidRequest", "ttl_seconds"),
    (b'{"ttl_seconds": true}', "InvalidRequest", "ttl_seconds"),
    (b'{"ttl_seconds": NaN}', "InvalidRequest", "ttl_seconds"),
    (b'{"ttl_seconds": 1e999}', "InvalidRequest", "ttl_seconds"),
    (b'{"wait_seconds": -0.1}', "InvalidRequest", "wait_seconds"),
    (b'{"wait_seconds": [1]}', "InvalidRequest", "wait_seconds"),
    (b"[" * 30000 + b"]" * 30000, "InvalidRequest", None),
    (b"\xff\xfe", "InvalidRequest", None),
    (b"{" + b'"lease": "a",' * 6000 + b'"x": 1}', "PayloadTooLarge", None),
]


@pytest.mark.parametrize(("payload", "code", "field"), BAD_BODIES)
async def test_bad_bodies_are_rejected_and_change_nothing(sidecar, agent, payload, code, field):
    calls_before = len(agent.calls)
    response = await sidecar.client.post("/busy", data=payload)
    body = await response.json()
    assert response.status == (413 if code == "PayloadTooLarge" else 400)
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    if field is not None:
        assert field in body["error"]["message"]
        assert body["error"]["field"] == field
    _, state = await sidecar.get("/state")
    assert state["leases"] == []
    assert len(agent.calls) == calls_before


async def test_idle_and_release_validate_too(sidecar):
    await sidecar.post("/busy", {"lease": "keep"})
    for path, payload in (
        ("/idle", {"lease": "bad id!"}),
        ("/idle", {"ttl_seconds": 1}),
        ("/release", {"lease": "keep"}),
    ):
        response = await sidecar.client.post(path, data=json.dumps(payload))
        assert response.status == 400, path
    _, state = await sidecar.get("/state")
    assert [lease["lease"] for lease in state["leases"]] == ["keep"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "NotFound"),
        ("GET", "/busy", 405, "MethodNotAllowed"),
        ("DELETE", "/state", 405, "MethodNotAllowed"),
        ("POST", "/healthz", 405, "MethodNotAllowed"),
    ],
)
async def test_unknown_paths_and_methods_get_json_errors(sidecar, method, path, status, code):
    response = await sidecar.client.request(method, path)
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (status, code)
    assert path in body["error"]["message"]


async def test_a_waiting_busy_answers_as_soon_as_its_lease_is_released(aiohttp_client, agent):
    """Found by schemathesis: a waiter was only woken by backend answers, not by its lease going."""
    agent.fail(fa.delay(30, methods=("PUT",)))
    async with running_sidecar(aiohttp_client, agent) as sidecar:
        waiting = asyncio.create_task(sidecar.post("/busy", {"lease": "j", "wait_seconds": 60}))
        await sidecar.holds("j")
        await sidecar.post("/idle", {"lease": "j"})
        status, body = await asyncio.wait_for(waiting, 5)
        assert (status, body["leases"]) == (503, 0)


async def test_a_waiting_busy_answers_when_its_ttl_expires(fake_time):
    sidecar, agent, clock = fake_time
    agent.fail(fa.delay(30, methods=("PUT",)))
    waiting = asyncio.create_task(
        sidecar.post("/busy", {"lease": "j", "ttl_seconds": 5, "wait_seconds": 60})
    )
    await sidecar.holds("j")
    clock.advance(6)
    sidecar.service.recheck()
    status, _ = await asyncio.wait_for(waiting, 5)
    assert status == 503


async def test_a_huge_integer_is_a_400_naming_the_field_not_a_500(sidecar):
    body = b'{"lease": "x", "ttl_seconds": 1' + b"0" * 400 + b"}"
    response = await sidecar.client.post("/busy", data=body)
    doc = await response.json()
    assert response.status == 400
    assert (doc["error"]["code"], doc["error"]["field"]) == ("InvalidRequest", "ttl_seconds")
    assert (await sidecar.get("/state"))[1]["lease_count"] == 0


async def test_a_body_that_is_not_the_gzip_it_claims_is_a_400(sidecar):
    response = await sidecar.client.post(
        "/busy", data=b"not gzip at all", headers={"Content-Encoding": "gzip"}
    )
    doc = await response.json()
    assert (response.status, doc["error"]["code"]) == (400, "InvalidRequest")
    assert "content-encoding" in doc["error"]["message"].lower()
    assert sidecar.view().lease_count == 0  # (the server closed that connection)


async def test_non_ascii_authorization_is_a_401_not_a_500(aiohttp_client, agent):
    async with running_sidecar(aiohttp_client, agent, token="0123456789abcdef-token") as sidecar:
        response = await sidecar.client.post(
            "/busy", headers={"Authorization": "Bearer \udcff\udcfe-token"}, skip_auto_headers=()
        )
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "Unauthorized"


async def test_state_lists_at_most_a_hundred_leases_and_counts_them_all(aiohttp_client, agent):
    async with running_sidecar(aiohttp_client, agent, max_leases=5000) as sidecar:
        for i in range(1500):
            await sidecar.service.busy(f"job-{i}", None, wait=0)
        _, state = await sidecar.get("/state")
        assert (len(state["leases"]), state["lease_count"], state["busy"]) == (100, 1500, True)
        assert state["leases"][0]["lease"] == "job-0"  # the oldest first


async def test_a_refresh_without_ttl_keeps_the_leases_ttl(fake_time):
    """A heartbeat that names no ttl_seconds restarts the lease's TTL instead of making
    the lease permanent: a worker killed after it still loses its lease."""
    sidecar, _agent, clock = fake_time
    await sidecar.post("/busy", {"lease": "w", "ttl_seconds": 5})
    clock.advance(3)
    assert (await sidecar.post("/busy", {"lease": "w"}))[0] == 200
    _, state = await sidecar.get("/state")
    assert state["leases"][0]["ttl_seconds"] == 5
    clock.advance(5.5)
    await sidecar.time_moved()
    _, state = await sidecar.get("/state")
    assert (state["busy"], state["lease_count"]) == (False, 0)


async def test_the_shortest_ttl_is_one_second(sidecar):
    status, body = await sidecar.post("/busy", {"lease": "w", "ttl_seconds": 1})
    assert (status, body["protected"]) == (200, True)


async def test_a_waiting_busy_is_not_answered_protected_for_a_lease_that_expired(fake_time):
    """Protection confirmed after the lease's TTL passed (a slow agent): the lease is gone,
    so the answer is 503 with no lease held, never 200 protected."""
    sidecar, agent, clock = fake_time
    agent.fail(fa.delay(30, methods=("PUT",)))
    waiting = asyncio.create_task(
        sidecar.post("/busy", {"lease": "j", "ttl_seconds": 5, "wait_seconds": 60})
    )
    await eventually(lambda: clock.sleeping)  # the enable is at the agent, delayed
    clock.advance(31)  # it lands only now, long after the TTL
    status, body = await asyncio.wait_for(waiting, 5)
    assert agent.puts() == [{"ProtectionEnabled": True, "ExpiresInMinutes": 60}]
    assert (status, body["error"]["code"], body["leases"]) == (503, "ProtectionUnavailable", 0)
    assert "TTL passed" in body["error"]["message"]


async def test_the_404_message_lists_the_routes_the_server_has(aiohttp_client, agent):
    """Derived from the router: a route added to the app is listed without more edits."""
    service = ProtectionService(
        Policy(), AgentBackend(agent.uri("task-1")), SystemClock(), max_leases=10
    )
    app = build_app(Api(service, None))

    async def extra(_request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/extra", extra)
    client = await aiohttp_client(app)
    response = await client.get("/nope")
    message = (await response.json())["error"]["message"]
    assert response.status == 404
    assert "GET /extra" in message
    for method, path in [("POST", "/busy"), ("POST", "/drain"), ("GET", "/state")]:
        assert f"{method} {path}" in message
    assert "HEAD" not in message
    await service.close()
