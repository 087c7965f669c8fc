"""`queuectl dashboard`: a read-only web page, a JSON API and Prometheus metrics over HTTP.

Paths:

- ``/``: the page. It is complete as served, and its inline script refreshes it from
  ``/api/status`` every 2 seconds. No file, font or script comes from anywhere else.
- ``/api/status``: the snapshot of queuectl.snapshot as JSON.
- ``/metrics``: the Prometheus text exposition format.
- ``/healthz``: 200 "ok" when the database runs a query, 503 otherwise.

The server only reads: every request runs read-only queries on the process's engine, from
the request's own thread. Job fields are user text, so the page escapes every one it puts
in HTML and the script only ever sets textContent. A Content-Security-Policy that allows
only the page's own script and style backs that up.
"""

from __future__ import annotations

import base64
import hashlib
import html
import ipaddress
import json
import logging
import socket
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from string import Template
from typing import Any, Callable
from urllib.parse import urlsplit

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from queuectl import metrics, snapshot
from queuectl.db import read_only, unavailable
from queuectl.errors import QueuectlError
from queuectl.models import JobState
from queuectl.output import duration, iso

log = logging.getLogger(__name__)

# The window of the queuectl_window_* metrics on /metrics.
PROMETHEUS_WINDOW = timedelta(minutes=5)
# Milliseconds between two refreshes of the page.
REFRESH_MS = 2000

# Host header names that a server bound to a loopback address accepts. Any other name
# means the request came through a DNS name that points at this machine, which a web page
# could use to read the dashboard from the user's browser (DNS rebinding).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


# The page ----------------------------------------------------------------------------------

PAGE_STYLE = """
:root { color-scheme: light dark; --fg: #1d2329; --muted: #66707a; --bg: #f6f7f9;
  --panel: #fff; --line: #dfe3e8; --green: #1a7f37; --red: #cf222e; --yellow: #9a6700;
  --cyan: #0969da; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --muted: #8d96a0;
  --bg: #0d1117; --panel: #161b22; --line: #30363d; --green: #3fb950; --red: #f85149;
  --yellow: #d29922; --cyan: #58a6ff; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; font: 14px/1.45 system-ui, sans-serif; color: var(--fg);
  background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.5rem 1rem; }
h1 { font-size: 1.3rem; margin: 0; }
h2 { font-size: 1rem; margin: 1.5rem 0 0.5rem; }
.mono, td { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
.muted, #updated { color: var(--muted); }
#updated { margin-left: auto; }
.banner { margin: 1rem 0 0; padding: 0.6rem 0.8rem; border: 1px solid var(--red);
  border-radius: 6px; color: var(--red); background: var(--panel); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(8rem, 1fr));
  gap: 0.75rem; margin-top: 1rem; }
.card { padding: 0.75rem 1rem; border: 1px solid var(--line); border-radius: 6px;
  background: var(--panel); }
.card .label { display: block; color: var(--muted); text-transform: uppercase;
  font-size: 0.75rem; letter-spacing: 0.04em; }
.card .value { display: block; font-size: 1.6rem; font-weight: 600; }
.pending .value { color: var(--yellow); } .processing .value { color: var(--cyan); }
.completed .value { color: var(--green); } .failed .value, .dead .value { color: var(--red); }
.cancelled .value { color: var(--muted); }
.badge { color: var(--muted); font-weight: normal; }
table { width: 100%; border-collapse: collapse; background: var(--panel);
  border: 1px solid var(--line); border-radius: 6px; }
th, td { text-align: left; vertical-align: top; padding: 0.35rem 0.6rem;
  border-bottom: 1px solid var(--line); }
th { font-size: 0.75rem; color: var(--muted); text-transform: uppercase; }
td.text { white-space: pre-wrap; word-break: break-all; }
td.id { word-break: break-all; }
td.number, th.number { text-align: right; }
tr.empty td { color: var(--muted); font-family: inherit; }
footer { margin-top: 1.5rem; color: var(--muted); }
a { color: var(--cyan); }
"""

PAGE_SCRIPT = """
"use strict";
(function () {
  var STATES = ["pending", "processing", "completed", "failed", "dead", "cancelled"];

  function duration(seconds) {
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) { return s + "s"; }
    if (s < 3600) { return Math.floor(s / 60) + "m " + (s % 60) + "s"; }
    if (s < 86400) { return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m"; }
    return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  }

  function setText(id, value) {
    document.getElementById(id).textContent = value === null ? "" : String(value);
  }

  function cell(value, className) {
    var td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "" : String(value);
    if (className) { td.className = className; }
    return td;
  }

  function fill(id, rows, columns, emptyText) {
    var body = document.getElementById(id);
    var children = rows.map(function (row) {
      var tr = document.createElement("tr");
      columns(row).forEach(function (td) { tr.appendChild(td); });
      return tr;
    });
    if (children.length === 0) {
      var tr = document.createElement("tr");
      var td = cell(emptyText);
      td.colSpan = body.parentNode.querySelectorAll("th").length;
      tr.className = "empty";
      tr.appendChild(td);
      children.push(tr);
    }
    body.replaceChildren.apply(body, children);
  }

  function workerCells(worker) {
    return [cell(worker.name, "id"), cell(worker.host, "id"), cell(worker.pid, "number"),
            cell(worker.queues, "text"), cell(worker.current_job || "idle", "id"),
            cell(duration(worker.heartbeat_age_seconds) + " ago")];
  }

  function failureCells(job) {
    return [cell(job.id, "id"), cell(job.queue, "id"), cell(job.state),
            cell(job.attempts + "/" + job.max_retries, "number"),
            cell(job.exit_code, "number"), cell(duration(job.failed_age_seconds) + " ago"),
            cell(job.command, "text"), cell(job.last_error, "text")];
  }

  function show(status) {
    STATES.forEach(function (state) { setText("count-" + state, status.jobs[state]); });
    setText("count-total", status.jobs.total);
    var completed = status.throughput.completed;
    var failed = status.throughput.failed;
    setText("throughput-completed", completed);
    setText("throughput-failed", failed);
    setText("success-rate", completed + failed ?
      Math.round(100 * completed / (completed + failed)) + "%" : "n/a");
    setText("workers-count", status.workers.length);
    fill("workers-body", status.workers, workerCells, "No workers running");
    fill("failures-body", status.recent_failures, failureCells, "No recent failures");
    setText("dlq-count", status.dlq.count);
    fill("dlq-body", status.dlq.jobs, failureCells, "The dead letter queue is empty");
    setText("database", status.database);
    setText("updated", "updated " + new Date(status.taken_at).toLocaleTimeString());
    document.getElementById("banner").hidden = true;
    document.body.setAttribute("data-refreshed", status.taken_at);
  }

  function showError(message) {
    var banner = document.getElementById("banner");
    banner.textContent = message + " (retrying)";
    banner.hidden = false;
  }

  function refresh() {
    fetch("/api/status", {cache: "no-store"})
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) { throw new Error(body.error || "HTTP " + response.status); }
          return body;
        });
      })
      .then(show)
      .catch(function (error) { showError(error.message || String(error)); })
      .finally(function () { window.setTimeout(refresh, REFRESH_MS); });
  }

  window.setTimeout(refresh, REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_MS))

PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>queuectl dashboard</title>
<link rel="icon" href="data:,">
<style>$style</style>
</head>
<body>
<header>
<h1>queuectl</h1>
<span id="database" class="mono muted">$database</span>
<span id="updated">$updated</span>
</header>
<p id="banner" class="banner"$banner_hidden>$banner</p>
<section class="cards" aria-label="Jobs per state">
$cards
</section>
<h2>Last minute</h2>
<p><span id="throughput-completed">$completed</span> completed/min,
<span id="throughput-failed">$failed</span> failed/min,
success rate <span id="success-rate">$success_rate</span></p>
<h2>Workers <span id="workers-count" class="badge">$worker_count</span></h2>
<table>
<thead><tr><th>Worker</th><th>Host</th><th class="number">PID</th><th>Queues</th>
<th>Current job</th><th>Heartbeat</th></tr></thead>
<tbody id="workers-body">$worker_rows</tbody>
</table>
<h2>Recent failures</h2>
<table>
<thead><tr>$job_headers</tr></thead>
<tbody id="failures-body">$failure_rows</tbody>
</table>
<h2>Dead letter queue <span id="dlq-count" class="badge">$dlq_count</span></h2>
<table>
<thead><tr>$job_headers</tr></thead>
<tbody id="dlq-body">$dlq_rows</tbody>
</table>
<footer>Read-only view, refreshed every $refresh_seconds s.
<a href="/api/status">/api/status</a> <a href="/metrics">/metrics</a>
<a href="/healthz">/healthz</a></footer>
<script>$script</script>
</body>
</html>
""")

JOB_HEADERS = ("ID", "Queue", "State", "Attempts", "Exit", "Failed", "Command", "Error")
NUMBER_HEADERS = ("Attempts", "Exit")


def _source_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# Only the page's own script and style run: an injected script or style attribute is
# blocked even if some text escaped the escaping.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_source_hash(PAGE_SCRIPT)}; "
    f"style-src {_source_hash(PAGE_STYLE)}; connect-src 'self'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _cell(value: Any, css_class: str = "") -> str:
    """Render one table cell with its value escaped."""
    content = "" if value is None else html.escape(str(value), quote=True)
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<td{attribute}>{content}</td>"


def _rows(items: list[dict], cells: Callable[[dict], list[str]], columns: int,
          empty: str) -> str:
    if not items:
        return f'<tr class="empty"><td colspan="{columns}">{html.escape(empty)}</td></tr>'
    return "".join(f"<tr>{''.join(cells(item))}</tr>" for item in items)


def _worker_cells(worker: dict) -> list[str]:
    return [_cell(worker["name"], "id"), _cell(worker["host"], "id"),
            _cell(worker["pid"], "number"), _cell(worker["queues"], "text"),
            _cell(worker["current_job"] or "idle", "id"),
            _cell(f"{duration(worker['heartbeat_age_seconds'])} ago")]


def _job_cells(job: dict) -> list[str]:
    return [_cell(job["id"], "id"), _cell(job["queue"], "id"), _cell(job["state"]),
            _cell(f"{job['attempts']}/{job['max_retries']}", "number"),
            _cell(job["exit_code"], "number"), _cell(f"{duration(job['failed_age_seconds'])} ago"),
            _cell(job["command"], "text"), _cell(job["last_error"], "text")]


def _card(state: str, count: int, element_id: str) -> str:
    return (f'<div class="card {state}"><span class="label">{state}</span>'
            f'<span class="value" id="{element_id}">{count}</span></div>')


def _updated(taken_at: datetime) -> str:
    # The server cannot know the browser's time zone: the script shows local time.
    return f"updated {taken_at.astimezone(timezone.utc):%H:%M:%S} UTC"


def render_page(status: dict | None, error: str | None = None) -> str:
    """Render the whole page from a status in the /api/status form, escaping every field.

    Without a status (the database query failed), the page shows the error, and its
    script fills in the data once the database works again.
    """
    jobs = status["jobs"] if status else {}
    cards = [_card(state.value, jobs.get(state.value, 0), f"count-{state.value}")
             for state in JobState]
    cards.append(_card("total", jobs.get("total", 0), "count-total"))
    throughput = status["throughput"] if status else {"completed": 0, "failed": 0}
    finished = throughput["completed"] + throughput["failed"]
    rate = f"{round(100 * throughput['completed'] / finished)}%" if finished else "n/a"
    workers = status["workers"] if status else []
    failures = status["recent_failures"] if status else []
    dead = status["dlq"] if status else {"count": 0, "jobs": []}
    columns = len(JOB_HEADERS)
    return PAGE.substitute(
        style=PAGE_STYLE,
        script=PAGE_SCRIPT,
        database=html.escape(status["database"] if status else ""),
        updated=html.escape(_updated(status["taken_at"]) if status else ""),
        banner=html.escape(f"{error} (retrying)" if error else ""),
        banner_hidden="" if error else " hidden",
        cards="\n".join(cards),
        completed=throughput["completed"],
        failed=throughput["failed"],
        success_rate=rate,
        worker_count=len(workers),
        worker_rows=_rows(workers, _worker_cells, 6, "No workers running"),
        job_headers="".join(f'<th class="number">{name}</th>' if name in NUMBER_HEADERS
                            else f"<th>{name}</th>" for name in JOB_HEADERS),
        failure_rows=_rows(failures, _job_cells, columns, "No recent failures"),
        dlq_count=dead["count"],
        dlq_rows=_rows(dead["jobs"], _job_cells, columns, "The dead letter queue is empty"),
        refresh_seconds=f"{REFRESH_MS / 1000:g}",
    )


# Prometheus --------------------------------------------------------------------------------

def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    label_text = ""
    if labels:
        pairs = ",".join(f'{key}="{_label_value(str(item))}"' for key, item in labels.items())
        label_text = "{" + pairs + "}"
    number = str(value) if isinstance(value, int) else repr(float(value))
    return f"{name}{label_text} {number}"


class _Exposition:
    """Collects metric families in the Prometheus text format, each with HELP and TYPE."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str,
               samples: list[tuple[dict[str, str] | None, float | None]]) -> None:
        # All families are gauges: the jobs table holds only current rows and `prune`
        # deletes them, so no total derived from it could be a counter that never decreases.
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            if value is not None:
                self.lines.append(_sample(name, value, labels))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_prometheus(status: snapshot.Snapshot | None,
                      report: metrics.MetricsReport | None) -> str:
    """Render the metrics. Without a snapshot, only queuectl_up 0 is reported."""
    exposition = _Exposition()
    exposition.family("queuectl_up",
                      "Whether the database queries of this scrape succeeded (1) or not (0).",
                      [(None, 1 if status is not None else 0)])
    if status is None or report is None:
        return exposition.text()
    exposition.family("queuectl_jobs", "Jobs in the queue by state.",
                      [({"state": state}, count) for state, count in status.counts.items()])
    exposition.family("queuectl_workers", "Live workers (heartbeat younger than one lease).",
                      [(None, len(status.workers))])
    busy = sum(1 for worker in status.workers if worker.current_job)
    exposition.family("queuectl_workers_busy", "Live workers that are running a job.",
                      [(None, busy)])
    window = report.window.total_seconds()
    exposition.family("queuectl_window_seconds",
                      "Length of the window of the queuectl_window_* metrics, in seconds.",
                      [(None, window)])
    exposition.family(
        "queuectl_window_completed_jobs", "Jobs completed within the window, by queue.",
        [({"queue": queue.queue}, queue.completed) for queue in report.queues])
    exposition.family(
        "queuectl_window_failed_attempts",
        "Attempts that ended in state failed or dead within the window, by queue.",
        [({"queue": queue.queue}, queue.failed) for queue in report.queues])
    exposition.family(
        "queuectl_window_wait_seconds",
        "Time from enqueue to the start of the latest attempt of the jobs finished within "
        "the window, by queue and quantile.",
        _quantile_samples(report, "wait"))
    exposition.family(
        "queuectl_window_run_seconds",
        "Duration of the latest attempt of the jobs finished within the window, by queue "
        "and quantile.",
        _quantile_samples(report, "run"))
    return exposition.text()


def _quantile_samples(report, measure: str) -> list:
    """Return the 0.5 and 0.95 quantile samples of one measure (wait or run) per queue."""
    return [
        ({"queue": queue.queue, "quantile": quantile}, getattr(queue, f"{measure}_{name}"))
        for queue in report.queues
        for quantile, name in (("0.5", "p50"), ("0.95", "p95"))
    ]


# HTTP --------------------------------------------------------------------------------------

def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode_json(data: Any) -> bytes:
    return json.dumps(data, default=_json_default).encode()


def is_loopback(host: str) -> bool:
    """Return whether a host name or address is this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """Return the host name of a Host header, without its port and brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server: one thread per request, all of them sharing the process's engine."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.engine = engine
        # Only a server on a loopback address checks Host. On any other address the user
        # chose to serve the network, under names that this process cannot know.
        self.allowed_hosts = (LOOPBACK_NAMES | {host.lower()}) if is_loopback(host) else None
        super().__init__(address, DashboardHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class DashboardHandler(BaseHTTPRequestHandler):
    """Routes GET and HEAD requests, and rejects every other method with 405."""

    server: DashboardServer
    server_version = "queuectl-dashboard"
    # Seconds an idle connection may stay open, so that idle clients do not hold threads.
    timeout = 60
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def _reject_method(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"method not allowed: the dashboard "
                   b"is read-only\n", extra_headers={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _reject_method

    def _dispatch(self, send_body: bool) -> None:
        self.send_body = send_body
        allowed = self.server.allowed_hosts
        host = self.headers.get("Host")
        if allowed is not None and host is not None and _host_name(host) not in allowed:
            log.warning("rejected a request for Host %r: only %s are served", host,
                        ", ".join(sorted(allowed)))
            self._send(403, "text/plain; charset=utf-8",
                       b"forbidden: unknown Host header; open the dashboard at 127.0.0.1\n")
            return
        route = ROUTES.get(urlsplit(self.path).path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            route(self)
        except Exception:  # noqa: BLE001 - one failed request must not stop the server
            log.exception("request %s %s failed", self.command, self.path)
            self._send(500, "text/plain; charset=utf-8", b"internal error; see the log\n")

    def _send(self, status: int, content_type: str, body: bytes,
              extra_headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if getattr(self, "send_body", True):
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("client closed the connection before the response of %s", self.path)

    def _unavailable_message(self, exc: Exception) -> str:
        return unavailable(self.server.engine.url, exc).message

    def _snapshot(self) -> tuple[snapshot.Snapshot | None, str | None]:
        """Take a snapshot, or return the error message when the database fails."""
        try:
            return snapshot.take_snapshot(self.server.engine), None
        except (DBAPIError, QueuectlError) as exc:
            message = self._unavailable_message(exc) if isinstance(exc, DBAPIError) \
                else exc.message
            log.warning("snapshot for %s failed: %s", self.path, message)
            return None, message

    def page(self) -> None:
        current, error = self._snapshot()
        status = snapshot.snapshot_to_dict(current) if current else None
        body = render_page(status, error).encode()
        self._send(200 if current else 503, "text/html; charset=utf-8", body,
                   {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                    "X-Frame-Options": "DENY"})

    def api_status(self) -> None:
        current, error = self._snapshot()
        if current is None:
            self._send(503, "application/json", _encode_json({"error": error}))
            return
        self._send(200, "application/json", _encode_json(snapshot.snapshot_to_dict(current)))

    def prometheus(self) -> None:
        current, _error = self._snapshot()
        report = None
        if current is not None:
            try:
                report = metrics.compute_metrics(self.server.engine, PROMETHEUS_WINDOW)
            except DBAPIError as exc:
                log.warning("metrics failed: %s", self._unavailable_message(exc))
                current = None
        body = render_prometheus(current, report).encode()
        self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)

    def healthz(self) -> None:
        try:
            with read_only(self.server.engine).connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            message = self._unavailable_message(exc)
            log.warning("health check failed: %s", message)
            self._send(503, "text/plain; charset=utf-8", f"unavailable: {message}\n".encode())
            return
        self._send(200, "text/plain; charset=utf-8", b"ok\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s - %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.warning("%s - %s", self.address_string(), format % args)


ROUTES: dict[str, Callable[[DashboardHandler], None]] = {
    "/": DashboardHandler.page,
    "/api/status": DashboardHandler.api_status,
    "/metrics": DashboardHandler.prometheus,
    "/healthz": DashboardHandler.healthz,
}


def create_server(engine: Engine, host: str, port: int) -> DashboardServer:
    """Bind the dashboard to host and port (0 picks a free port); serve_forever() runs it.

    Raises QueuectlError when the address cannot be bound.
    """
    try:
        return DashboardServer((host, port), engine)
    except OSError as exc:
        raise QueuectlError(
            f"cannot listen on {host} port {port}: {exc.strerror or exc}; "
            "choose another with --host or --port"
        ) from exc
