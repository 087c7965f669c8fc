"""`queuectl dashboard`: its JSON, Prometheus and health endpoints, the page's escaping,
and the page itself in headless Chromium after real workers ran jobs.

Most tests serve from a thread of the test process on port 0. The Chromium test runs the
real command in a subprocess. It skips when /usr/bin/chromium is missing, unless CI=true,
where it fails: CI installs the browser with `apt-get install -y chromium`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.engine import make_url

from queuectl import db, jobs, workers as worker_service
from queuectl.dashboard import DashboardServer, create_server
from queuectl.errors import QueuectlError
from queuectl.spec import validate_payload
from queuectl.tables import workers_table
from tests.conftest import IN_CI, wait_for
from tests.integration.conftest import only_on
from tests.tables import table_contents

CHROMIUM = Path("/usr/bin/chromium")
# Flags that keep headless Chromium from reaching any other host or profile.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection",
)
# A command and an error that would run script in the page if they were not escaped.
HOSTILE_COMMAND = "echo '<script>document.title=\"owned\"</script>'; exit 3"
HOSTILE_ERROR = '<img src=x onerror="document.title=\'owned\'">'
# For tests of the HTTP layer alone, which works the same on every backend.
http_only = only_on("sqlite")


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str

    def json(self):
        return json.loads(self.body)


def request(server: DashboardServer, path: str, method: str = "GET",
            headers: dict[str, str] | None = None) -> Response:
    """Send one request to the dashboard and return its response."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read().decode())
    finally:
        connection.close()


def serve(engine) -> tuple[DashboardServer, threading.Thread]:
    server = create_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def dashboard(engine):
    """A dashboard on the test database, served from a thread on a free port."""
    server, thread = serve(engine)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def enqueue(engine, job_id: str, **fields) -> None:
    jobs.enqueue(engine, validate_payload({"id": job_id, "command": "true", **fields}))


def run_next(engine, worker_id: str = "worker-test", error: str | None = None,
             exit_code: int = 0) -> str:
    """Claim the next job and complete it, or fail it with error; return its id."""
    claimed = jobs.claim_next(engine, worker_id, None, 300)
    assert claimed is not None, "expected a due job to claim"
    if error is None:
        jobs.complete(engine, claimed, exit_code, "")
    else:
        jobs.fail(engine, claimed, error, exit_code, None)
    return claimed.id


@pytest.fixture
def busy_queue(engine):
    """2 completed, 1 failed and waiting for a retry, 1 dead, 1 pending, 1 running job,
    and one live worker that runs the running job.
    """
    enqueue(engine, "done-1")
    enqueue(engine, "done-2")
    enqueue(engine, "flaky", max_retries=3)
    enqueue(engine, "broken", command=HOSTILE_COMMAND, max_retries=1)
    enqueue(engine, "long", command="sleep 60")
    enqueue(engine, "waiting")
    run_next(engine)
    run_next(engine)
    run_next(engine, error="exit status 1", exit_code=1)
    run_next(engine, error=HOSTILE_ERROR, exit_code=3)
    worker_service.register(engine, "test-host-w1", "worker-1", None, os.getpid())
    jobs.claim_next(engine, "test-host-w1", None, 300)
    with engine.begin() as conn:  # as the worker's heartbeat records the job it runs
        conn.execute(update(workers_table).where(workers_table.c.id == "test-host-w1")
                     .values(current_job="long"))
    return engine


def test_api_status_reports_counts_workers_failures_and_dlq(dashboard, busy_queue) -> None:
    response = request(dashboard, "/api/status")
    status = response.json()
    worker = status["workers"][0]
    failures = {job["id"]: job for job in status["recent_failures"]}

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert status["taken_at"].endswith("Z")
    assert status["jobs"] == {"pending": 1, "processing": 1, "completed": 2, "failed": 1,
                              "dead": 1, "cancelled": 0, "total": 6}
    assert status["throughput"] == {"window_seconds": 60, "completed": 2, "failed": 2}
    assert [each["name"] for each in status["workers"]] == ["worker-1"]
    assert worker["current_job"] == "long"
    assert worker["host"] == "test-host"
    assert worker["pid"] == os.getpid()
    assert 0 <= worker["heartbeat_age_seconds"] < 30
    assert sorted(failures) == ["broken", "flaky"]
    assert failures["broken"]["last_error"] == HOSTILE_ERROR
    assert failures["broken"]["state"] == "dead"
    assert failures["flaky"]["state"] == "failed"
    assert status["dlq"]["count"] == 1
    assert [job["id"] for job in status["dlq"]["jobs"]] == ["broken"]


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """Parse the text exposition format strictly: HELP and TYPE precede each family."""
    samples: dict[tuple[str, frozenset], float] = {}
    described: dict[str, set[str]] = {}
    for line in text.splitlines():
        comment = re.fullmatch(r"# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)", line)
        if comment:
            kind, name, value = comment.groups()
            assert kind not in described.setdefault(name, set()), f"second {kind} of {name}"
            described[name].add(kind)
            if kind == "TYPE":
                assert value in ("gauge", "counter"), line
            continue
        sample = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert sample, f"not a sample line: {line!r}"
        name, label_text, value = sample.groups()
        assert described.get(name) == {"HELP", "TYPE"}, f"{name} lacks HELP or TYPE"
        labels = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', label_text or "")
        samples[(name, frozenset(labels))] = float(value)
    return samples


def test_metrics_endpoint_reports_jobs_workers_and_window(dashboard, busy_queue) -> None:
    response = request(dashboard, "/metrics")
    samples = parse_prometheus(response.body)  # fails on any malformed line
    default = ("queue", "default")
    median = ("quantile", "0.5")

    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.body.endswith("\n")
    assert samples[("queuectl_up", frozenset())] == 1
    assert samples[("queuectl_jobs", frozenset({("state", "pending")}))] == 1
    assert samples[("queuectl_jobs", frozenset({("state", "completed")}))] == 2
    assert samples[("queuectl_jobs", frozenset({("state", "dead")}))] == 1
    assert samples[("queuectl_workers", frozenset())] == 1
    assert samples[("queuectl_workers_busy", frozenset())] == 1
    assert samples[("queuectl_window_seconds", frozenset())] == 300
    assert samples[("queuectl_window_completed_jobs", frozenset({default}))] == 2
    assert samples[("queuectl_window_failed_attempts", frozenset({default}))] == 2
    assert samples[("queuectl_window_wait_seconds", frozenset({default, median}))] >= 0
    assert samples[("queuectl_window_run_seconds", frozenset({default, median}))] >= 0


@http_only
def test_healthz_answers_ok_when_database_answers(dashboard) -> None:
    response = request(dashboard, "/healthz")

    assert response.status == 200
    assert response.body == "ok\n"


@pytest.fixture
def broken_dashboard(tmp_path):
    """A dashboard whose SQLite database cannot be opened: its folder does not exist."""
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'queue.db'}")
    server, thread = serve(engine)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    engine.dispose()


def test_healthz_answers_503_when_database_fails(broken_dashboard) -> None:
    response = request(broken_dashboard, "/healthz")

    assert response.status == 503
    assert response.body.startswith("unavailable: cannot reach the database sqlite:///")


def test_api_status_503_when_database_fails(broken_dashboard) -> None:
    response = request(broken_dashboard, "/api/status")

    assert response.status == 503
    assert "cannot reach the database" in response.json()["error"]


def test_page_shows_error_when_database_fails(broken_dashboard) -> None:
    response = request(broken_dashboard, "/")

    assert response.status == 503
    assert "cannot reach the database" in response.body
    assert '<p id="banner" class="banner">' in response.body  # shown, not hidden


def test_metrics_endpoint_reports_down_when_database_fails(broken_dashboard) -> None:
    response = request(broken_dashboard, "/metrics")

    assert response.status == 200
    assert parse_prometheus(response.body) == {("queuectl_up", frozenset()): 0}


@http_only
def test_unknown_path_answers_404(dashboard) -> None:
    response = request(dashboard, "/api/jobs")

    assert response.status == 404
    assert response.body == "not found\n"


@http_only
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_write_methods_are_rejected(dashboard, method) -> None:
    response = request(dashboard, "/api/status", method=method)

    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"


@http_only
def test_head_answers_headers_without_body(dashboard) -> None:
    response = request(dashboard, "/healthz", method="HEAD")

    assert response.status == 200
    assert response.headers["Content-Length"] == "3"
    assert response.body == ""


@http_only
def test_query_string_does_not_change_route(dashboard) -> None:
    assert request(dashboard, "/healthz?probe=1").status == 200


@http_only
@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8765",
                                  "127.0.0.1.attacker.example"])
def test_unknown_host_header_is_rejected(dashboard, host) -> None:
    response = request(dashboard, "/api/status", headers={"Host": host})

    assert response.status == 403


@http_only
@pytest.mark.parametrize("host", ["localhost:8765", "127.0.0.1", "[::1]:8765"])
def test_loopback_host_header_is_served(dashboard, host) -> None:
    assert request(dashboard, "/healthz", headers={"Host": host}).status == 200


def test_page_escapes_every_job_field(dashboard, busy_queue) -> None:
    page = request(dashboard, "/").body

    assert "<script>document.title" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;document.title=&quot;owned&quot;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;owned&#x27;&quot;&gt;" in page
    assert page.count("<script>") == 1  # only the page's own


@http_only
def test_port_in_use_raises_error_naming_it(dashboard, engine) -> None:
    port = dashboard.server_address[1]

    with pytest.raises(QueuectlError) as raised:
        create_server(engine, "127.0.0.1", port)

    assert f"cannot listen on 127.0.0.1 port {port}" in raised.value.message
    assert "choose another with --host or --port" in raised.value.message


@http_only
def test_page_allows_only_its_own_script_and_style(dashboard) -> None:
    policy = request(dashboard, "/").headers["Content-Security-Policy"]

    assert "default-src 'none'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+';", policy)
    assert "unsafe-inline" not in policy


def test_page_shows_counts_workers_and_dlq(dashboard, busy_queue) -> None:
    page = request(dashboard, "/").body

    assert '<span class="value" id="count-completed">2</span>' in page
    assert '<span class="value" id="count-total">6</span>' in page
    assert '<span id="workers-count" class="badge">1</span>' in page
    assert '<span id="dlq-count" class="badge">1</span>' in page
    assert '<td class="id">worker-1</td>' in page


@only_on("postgresql")
def test_dashboard_never_shows_database_password(db_url, tmp_path) -> None:
    # Given a database URL with a password (the test server trusts any password),
    url = make_url(db_url).set(password="pa55-secret")
    engine = db.create_queue_engine(url)
    db.upgrade_schema(engine)
    missing = db.create_queue_engine(url.set(database="queuectl_no_such_database"))
    server, thread = serve(engine)
    broken, broken_thread = serve(missing)
    try:
        bodies = [request(server, path).body
                  for path in ("/", "/api/status", "/metrics", "/healthz")]
        bodies += [request(broken, path).body
                   for path in ("/", "/api/status", "/metrics", "/healthz")]
    finally:
        for running, running_thread in ((server, thread), (broken, broken_thread)):
            running.shutdown()
            running.server_close()
            running_thread.join(timeout=10)
        engine.dispose()
        missing.dispose()

    assert not [body for body in bodies if "pa55-secret" in body]
    assert ":***@" in bodies[0]


def test_dashboard_requests_leave_tables_unchanged(dashboard, busy_queue) -> None:
    before = table_contents(busy_queue)

    for path in ("/", "/api/status", "/metrics", "/healthz"):
        assert request(dashboard, path).status == 200

    assert table_contents(busy_queue) == before


class ElementIndex(HTMLParser):
    """Collects the tags of a document and the text of the elements that have an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: dict[str, dict[str, str | None]] = {}
        self.text_by_id: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        self.attributes.setdefault(tag, dict(attrs))
        element_id = dict(attrs).get("id")
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append(element_id)
        if element_id:
            self.text_by_id[element_id] = ""

    def handle_endtag(self, tag) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data) -> None:
        for element_id in self._open:
            if element_id:
                self.text_by_id[element_id] += data


def run_dashboard(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start `queuectl dashboard --port 0` and return it with the URL it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "queuectl", "dashboard", "--port", "0"], env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    printed = b""

    def url() -> str | None:
        nonlocal printed
        if select.select([process.stderr], [], [], 0.05)[0]:
            printed += os.read(process.stderr.fileno(), 4096)
        found = re.search(rb"dashboard at (http://127\.0\.0\.1:\d+/)", printed)
        assert process.poll() is None, f"dashboard exited: {printed.decode()}"
        return found.group(1).decode() if found else None

    try:
        return process, wait_for(url, timeout=15, message="the dashboard to print its URL")
    except BaseException:
        process.kill()
        process.wait()
        raise


# The HTTP tests above run the dashboard's queries on both backends; one browser run, on
# the default backend, keeps the suite fast.
@only_on("sqlite")
def test_page_in_chromium_shows_counts_after_jobs_ran(cli, engine, workers, queue_env,
                                                      tmp_path) -> None:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; install it with: apt-get install -y chromium"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)

    # Given three jobs that complete and one hostile job that fails into the DLQ,
    workers.start(1)
    for number in range(3):
        assert cli("enqueue", json.dumps({"id": f"ok-{number}", "command": "true"})
                   ).returncode == 0
    hostile = {"id": "hostile", "command": HOSTILE_COMMAND, "max_retries": 1}
    assert cli("enqueue", json.dumps(hostile)).returncode == 0
    wait_for(lambda: jobs.count_by_state(engine)["completed"] == 3 and
             jobs.count_by_state(engine)["dead"] == 1, timeout=30,
             message="3 jobs to complete and 1 to move to the DLQ")

    # when headless Chromium loads the page and lets its script refresh it,
    process, url = run_dashboard(queue_env)
    try:
        browser = subprocess.run(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
             "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    finally:
        process.terminate()
        process.wait(timeout=10)
    page = ElementIndex()
    page.feed(browser.stdout)

    # then the page shows the counts, refreshed from /api/status, and ran no job text.
    assert browser.returncode == 0, browser.stderr[-2000:]
    assert page.attributes["body"].get("data-refreshed"), "the script never refreshed the page"
    assert page.text_by_id["count-completed"] == "3"
    assert page.text_by_id["count-dead"] == "1"
    assert page.text_by_id["count-total"] == "4"
    assert page.text_by_id["dlq-count"] == "1"
    assert "hostile" in page.text_by_id["dlq-body"]
    assert HOSTILE_COMMAND in page.text_by_id["dlq-body"]
    assert "img" not in page.tags
    assert page.tags.count("script") == 1
    assert "<title>queuectl dashboard</title>" in browser.stdout
