"""The framework integrations' set-up and edges: optional imports, options, which calls take
a lease, and what a refused lease does (in-process where the framework allows it)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import redis
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery import signals as celery_signals
from celery.app.trace import build_tracer
from celery.utils.imports import symbol_by_name
from dramatiq import Message, MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage
from rq import Queue

from ecs_protection import Client, TooManyLeasesError, _celery_shutdown
from ecs_protection._celery_shutdown import NotStarted
from ecs_protection._frameworks import lease_prefix
from ecs_protection.celery import protect
from ecs_protection.dramatiq import EcsProtection, LeaseRefusedError
from ecs_protection.rq import Worker
from tests.client_support import FakeSidecar
from tests.framework_support import BIN, ROOT

pytest_plugins = ["tests.framework_fixtures"]


def test_importing_ecs_protection_imports_no_framework():
    """The frameworks are extras: `import ecs_protection` (and the CLI) needs none of them."""
    code = (
        "import sys, ecs_protection, ecs_protection._cli\n"
        "found = {'celery', 'rq', 'dramatiq', 'redis', 'kombu'} & set(sys.modules)\n"
        "assert not found, found\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr


def run_python(code: str) -> str:
    """`python -c code` in a fresh interpreter: what it printed (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_ecs_protection_imports_no_asyncio_until_the_async_client_is_used():
    """asyncio is most of the import time, and only the async client needs it."""
    assert run_python("import ecs_protection, sys; print('asyncio' in sys.modules)") == "False"
    used = "import ecs_protection, sys; ecs_protection.AsyncClient; print('asyncio' in sys.modules)"
    assert run_python(used) == "True"


@pytest.mark.parametrize("framework", ["celery", "rq", "dramatiq"])
def test_each_integration_is_an_attribute_of_the_package_imported_on_first_use(framework):
    """`import ecs_protection` then `ecs_protection.celery.protect(app)` works (PEP 562),
    and only the integration used is imported."""
    code = (
        "import sys, ecs_protection\n"
        "others = {'celery', 'rq', 'dramatiq'} - {sys.argv[1]}\n"
        "module = getattr(ecs_protection, sys.argv[1])\n"
        "assert module is sys.modules['ecs_protection.' + sys.argv[1]], module\n"
        "assert not {'ecs_protection.' + name for name in others} & set(sys.modules)\n"
        "assert sys.argv[1] in dir(ecs_protection)\n"
        "print(module.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, framework],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ecs_protection.{framework}"


def test_an_unknown_attribute_of_the_package_is_still_an_attribute_error():
    assert (
        run_python(
            "import ecs_protection\n"
            "try:\n    ecs_protection.flask\n"
            "except AttributeError as exc:\n    print(exc)"
        )
        == "module 'ecs_protection' has no attribute 'flask'"
    )


def test_the_client_distribution_declares_each_framework_as_an_extra():
    text = (ROOT / "client" / "pyproject.toml").read_text()
    import tomllib  # noqa: PLC0415  (3.11+, as the repository's own tests)

    project = tomllib.loads(text)["project"]
    assert project["dependencies"] == ["requests>=2.31"]
    extras = project["optional-dependencies"]
    assert set(extras) == {"async", "celery", "rq", "dramatiq"}
    assert [extras[name][0].split(">=")[0] for name in ("celery", "rq", "dramatiq")] == [
        "celery",
        "rq",
        "dramatiq",
    ]


@pytest.mark.parametrize(
    ("line", "example"),
    [
        ("ecs_protection.celery.protect(app)", "celery_app.py"),
        ("rq worker -w ecs_protection.rq.Worker", "rq_jobs.py"),
        ("broker.add_middleware(ecs_protection.dramatiq.EcsProtection())", "dramatiq_actors.py"),
    ],
)
def test_the_readme_shows_each_frameworks_one_line_as_its_example_uses_it(line, example):
    assert line in (ROOT / "README.md").read_text()
    assert line in (ROOT / "examples" / example).read_text()


def test_lease_names_carry_the_job_id_in_characters_a_lease_id_may_hold():
    assert lease_prefix("celery", "0f8a-42") == "celery-0f8a-42"
    odd = lease_prefix("rq", "job id/with spaces é" * 10)
    assert odd.startswith("rq-job_id_with_spaces__")
    assert len(odd) == len("rq-") + 64
    assert set(odd) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


@pytest.fixture
def fake():
    with FakeSidecar() as sidecar:
        yield sidecar


def test_celery_tasks_called_directly_or_eagerly_take_no_lease(fake):
    """Only a worker's delivery takes a lease: `task()` and `task.apply()` run in the caller."""
    app = Celery("direct", set_as_current=False)
    protect(app, client=Client(fake.url, strict=True))

    @app.task(shared=False)
    def double(n: int) -> int:
        return 2 * n

    assert double(2) == 4
    assert double.apply(args=(3,)).get() == 6
    assert fake.posts("/busy") == []


def test_celery_protect_wraps_tasks_defined_after_it_and_apps_finalized_before_it(fake):
    """Wrapped whenever the tasks exist; Celery's own tasks (celery.*) are left alone."""
    later = Celery("later", set_as_current=False)
    protect(later, client=Client(fake.url))

    @later.task(shared=False)
    def defined_after() -> None: ...

    early = Celery("early", set_as_current=False)

    @early.task(shared=False)
    def defined_before() -> None: ...

    early.finalize()
    protect(early, client=Client(fake.url))
    for app in (later, early):
        wrapped = {name for name, task in app.tasks.items() if hasattr(task.run, "__wrapped__")}
        assert wrapped == {name for name in app.tasks if not name.startswith("celery.")}
        assert len(wrapped) == 1


def test_celery_tasks_registered_after_the_app_was_finalized_are_wrapped_by_the_worker(fake):
    """An app finalized early (anything that reads app.tasks) registers the tasks of its
    `include` modules afterwards: the worker wraps them before its pool starts."""
    app = Celery("late", broker="redis://127.0.0.1:9/0", set_as_current=False)
    protect(app, client=Client(fake.url))
    app.finalize()

    @app.task(shared=False, name="late.job")
    def job() -> None: ...

    app.WorkController(pool_cls="solo", concurrency=1, without_heartbeat=True)  # not started
    assert hasattr(app.tasks["late.job"].run, "__wrapped__")


def test_celery_bad_options_raise_and_change_nothing():
    app = Celery("options", set_as_current=False)
    with pytest.raises(ValueError, match="ttl"):
        protect(app, ttl=0)
    with pytest.raises(ValueError, match="drain_poll_seconds"):
        protect(app, drain_poll_seconds=float("nan"))
    protect(app)  # the failed calls registered nothing
    with pytest.raises(RuntimeError, match="already"):
        protect(app)
    assert sum(step.__name__ == "DrainWatch" for step in app.steps["consumer"]) == 1


def test_rq_worker_checks_its_lease_options_before_taking_any_job(redis_server):
    class BadTtl(Worker):
        protection_ttl = -1.0

    connection = redis.Redis.from_url(redis_server.url(redis_server.new_db()))
    with pytest.raises(ValueError, match="ttl"):
        BadTtl(["default"], connection=connection)
    assert Worker(["default"], connection=connection).protection_ttl == 60
    connection.close()


def test_dramatiq_middleware_bad_options_raise():
    with pytest.raises(ValueError, match="ttl"):
        EcsProtection(ttl=0)
    with pytest.raises(ValueError, match="wait_seconds"):
        EcsProtection(wait_seconds=-1)
    with pytest.raises(TypeError, match="ttl"):
        EcsProtection(ttl="60")  # type: ignore[arg-type]


def traced(task: Any) -> Any:
    """Run `task` as a worker's delivery does (not eager, not a direct call), in-process."""
    tracer = build_tracer(task.name, task, app=task.app, eager=False, propagate=False)
    return tracer("task-id-1", [], {}, {"id": "task-id-1", "delivery_info": {}})


def test_celery_a_lease_refused_for_another_reason_than_a_drain_fails_the_task(fake):
    fake.busy_error = (429, "TooManyLeases")
    app = Celery("refused", set_as_current=False)
    protect(app, client=Client(fake.url))

    @app.task(shared=False)
    def job() -> str:
        return "ran"

    app.finalize()
    outcome = traced(job)
    assert outcome.info.state == "FAILURE"
    assert isinstance(outcome.retval.exception, TooManyLeasesError)


def test_celery_a_drain_rejects_an_acks_late_task_with_requeue_and_runs_nothing(fake):
    fake.draining = True
    app = Celery("draining", set_as_current=False)
    protect(app, client=Client(fake.url))
    ran = []

    @app.task(shared=False, acks_late=True)
    def job() -> None:
        ran.append(1)

    app.finalize()
    outcome = traced(job)
    assert outcome.info.state == "REJECTED"
    assert outcome.info.retval.requeue is True
    assert ran == []


@pytest.fixture
def message() -> MessageProxy:
    return MessageProxy(
        Message(queue_name="default", actor_name="job", args=(1,), kwargs={}, options={})
    )


def test_dramatiq_a_lease_refused_for_another_reason_than_a_drain_fails_the_message(fake, message):
    fake.busy_error = (429, "TooManyLeases")
    middleware = EcsProtection(client=Client(fake.url))
    with pytest.raises(LeaseRefusedError, match="TooManyLeases"):
        middleware.before_process_message(StubBroker(), message)


def test_dramatiq_a_drain_enqueues_the_message_again_before_it_is_skipped(fake, message):
    fake.draining = True
    broker = StubBroker()
    broker.declare_queue("default")
    with pytest.raises(SkipMessage):
        EcsProtection(client=Client(fake.url)).before_process_message(broker, message)
    again = Message.decode(broker.queues["default"].get_nowait())
    assert (again.message_id, again.args, again.options) == (message.message_id, (1,), {})
    assert message.options["store_results"] is False  # the skipped delivery stores nothing
    broker.close()


def test_dramatiq_a_drain_that_cannot_enqueue_the_message_again_fails_it_unrun(fake, message):
    """Dramatiq would log any other exception and run the actor: this one fails the message."""
    fake.draining = True
    broker = StubBroker()  # no queue declared: enqueue raises
    with pytest.raises(LeaseRefusedError, match="not enqueued again"):
        EcsProtection(client=Client(fake.url)).before_process_message(broker, message)
    broker.close()


def test_rq_a_lease_refused_for_another_reason_puts_the_job_back_and_stops(fake, redis_db, workers):
    fake.busy_error = (429, "TooManyLeases")
    queue = Queue(connection=redis_db.client)
    job = queue.enqueue("time.sleep", 0).id
    argv = [str(BIN / "rq"), "worker", "-w", "ecs_protection.rq.Worker", "--url", redis_db.url]
    worker = workers(argv, {"TASK_PROTECTION_URL": fake.url})
    assert worker.wait() == 0, worker.output
    assert f"job {job} not started: no lease (429 TooManyLeases" in worker.output
    assert queue.get_job_ids() == [job]
    assert queue.failed_job_registry.get_job_ids() == []


def test_celery_a_task_not_started_when_the_shutdown_began_takes_no_lease_and_requeues(fake):
    """From worker_shutting_down, the next task does not run: no lease, a requeueing Reject
    (NotStarted), not a failure; before it, the same task runs inside its lease."""
    app = Celery("stopping", set_as_current=False)
    protect(app, client=Client(fake.url))
    ran = []

    @app.task(shared=False)
    def job() -> None:
        ran.append(1)

    app.finalize()
    traced(job)
    assert ran == [1]
    assert len(fake.posts("/busy")) == 1

    celery_signals.worker_shutting_down.send(sender="celery@test", sig="SIGTERM", how="Warm")
    try:
        outcome = traced(job)
    finally:
        _celery_shutdown._shutting_down._page[0] = 0  # type: ignore[union-attr]
    assert outcome.info.state == "REJECTED"
    assert isinstance(outcome.info.retval, NotStarted)
    assert outcome.info.retval.requeue is True
    assert ran == [1]
    assert len(fake.posts("/busy")) == 1  # no second lease


def delivered(connection: Any, task: Any) -> Any:
    """The task sent to the in-memory broker and received as the worker's main process
    receives it: a Request of the task's (protected) Request class."""
    task.apply_async(args=(7,), task_id="put-back-1", queue="jobs")
    message = connection.SimpleQueue("jobs").get(timeout=60)
    request_class = symbol_by_name(task.Request)
    return request_class(
        message,
        app=task.app,
        task=task,
        on_ack=lambda *_: message.ack(),
        on_reject=lambda *_: message.reject(requeue=True),
        body=message.body,
        headers=message.headers,
        decoded=False,
    )


def not_started() -> ExceptionInfo:
    try:
        raise NotStarted("the worker is shutting down", requeue=True)  # noqa: TRY301
    except NotStarted:
        return ExceptionInfo()


def queued_ids(connection: Any) -> list[str]:
    found = []
    queue = connection.SimpleQueue("jobs")
    while True:
        try:
            message = queue.get(timeout=0.5)
        except queue.Empty:
            return found
        found.append(message.headers["id"])
        message.ack()


@pytest.mark.parametrize("acknowledged", [True, False], ids=["acked-before", "not-acked"])
def test_celery_a_task_acknowledged_before_it_was_not_started_is_published_again(acknowledged):
    """The main process's side of NotStarted: a message acknowledged already (the child
    accepted it before the shutdown began) is published again, same id and arguments;
    one not acknowledged is rejected with requeue, which puts that very message back."""
    app = Celery("putback", broker="memory://", set_as_current=False)
    protect(app, client=Client("http://127.0.0.1:1"))

    @app.task(shared=False, name="jobs.put_back")
    def job(n: int) -> int:
        return n

    app.finalize()
    with app.connection_for_read() as connection:
        request = delivered(connection, job)
        if acknowledged:
            request.acknowledge()
        request.on_failure(not_started())
        assert queued_ids(connection) == ["put-back-1"]  # once: nothing lost, nothing doubled


class _PoolChild:
    index = 3  # what billiard gives the current process in a prefork child


def test_celery_a_task_a_child_started_is_acknowledged_at_the_shutdowns_end(monkeypatch):
    """A child starts a task as the shutdown begins, and the main process never reads its
    word: at the end (before the connection closes and restores what is unacknowledged)
    the main process acknowledges that task's message, and only that one."""
    app = Celery("ending", broker="memory://", set_as_current=False)
    protect(app, client=Client("http://127.0.0.1:1"))
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("jobs")
        for task_id in ("ran-1", "waiting-1"):
            app.send_task("jobs.any", task_id=task_id, queue="jobs")
        ran, waiting = queue.get(timeout=60), queue.get(timeout=60)
        monkeypatch.setattr(_celery_shutdown, "current_process", _PoolChild)
        _celery_shutdown.note_start("ran-1", 0)
        flag = _celery_shutdown._shutting_down
        assert flag is not None
        _celery_shutdown.acknowledge_started(queue.consumer.channel)
        assert not ran.acknowledged  # no shutdown: nothing done
        celery_signals.worker_shutting_down.send(sender="celery@test", sig="SIGTERM", how="Warm")
        try:
            _celery_shutdown.acknowledge_started(queue.consumer.channel)
        finally:
            flag._page[0] = 0
        assert ran.acknowledged
        assert not waiting.acknowledged


@pytest.mark.parametrize("how", ["retry", "cold"])
def test_celery_the_shutdowns_end_acknowledges_only_the_delivery_a_child_ran(monkeypatch, how):
    """A retry is a new message with the task's id: the child ran the first delivery, not
    the retry waiting for its countdown, which must stay on the broker. After a cold
    shutdown nothing is acknowledged: what was cut off runs again rather than vanish."""
    app = Celery("ending", broker="memory://", set_as_current=False)
    protect(app, client=Client("http://127.0.0.1:1"))
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("jobs")
        retries = 1 if how == "retry" else 0
        app.send_task("jobs.any", task_id="ran-1", queue="jobs", retries=retries)
        message = queue.get(timeout=60)
        monkeypatch.setattr(_celery_shutdown, "current_process", _PoolChild)
        _celery_shutdown.note_start("ran-1", 0)
        flag = _celery_shutdown._shutting_down
        assert flag is not None
        celery_signals.worker_shutting_down.send(sender="celery@test", sig="SIGTERM", how="Warm")
        if how == "cold":
            celery_signals.worker_shutting_down.send(
                sender="celery@test", sig="SIGQUIT", how="Cold"
            )
        try:
            assert _celery_shutdown.began()
            _celery_shutdown.acknowledge_started(queue.consumer.channel)
        finally:
            flag._page[0] = 0
        assert not message.acknowledged
