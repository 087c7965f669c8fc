"""The `queuectl` command line: parses arguments, calls a service, prints the result."""

# No `from __future__ import annotations` here: Typer reads the parameter annotations of
# every command at each start, and string annotations made that about 8 ms instead of 3.
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from queuectl import __version__
from queuectl.errors import EXIT_FAILED, InvalidInput, QueuectlError
from queuectl.output import Style, stderr

log = logging.getLogger("queuectl")

app = typer.Typer(
    name="queuectl",
    help="A background job queue for shell commands.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,  # database URLs hold passwords
    # Plain help and usage errors: no boxes in logs and pipes, and no Rich import at start.
    rich_markup_mode=None,
)
worker_app = typer.Typer(help="Start, run and stop worker processes.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and retry jobs in the dead letter queue.",
                      no_args_is_help=True)
config_app = typer.Typer(help="Read and change settings stored in the database.",
                         no_args_is_help=True)
app.add_typer(worker_app, name="worker")
app.add_typer(dlq_app, name="dlq")
app.add_typer(config_app, name="config")


class Color(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


class State:
    """Options of the root command that every subcommand reads."""

    style = Style()
    verbosity = 0


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _engine():
    from queuectl.db import get_engine

    return get_engine()


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"queuectl {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    db_url: Annotated[Optional[str], typer.Option(
        "--db-url", envvar="QUEUECTL_DB_URL", show_default=False,
        help="Database URL, such as postgresql+psycopg://user@host/db. "
             "Default: the SQLite file under QUEUECTL_HOME.")] = None,
    home: Annotated[Optional[Path], typer.Option(
        "--home", envvar="QUEUECTL_HOME", show_default=False,
        help="Folder for the SQLite database, logs and PID files. Default: ~/.queuectl.")] = None,
    color: Annotated[Color, typer.Option(
        "--color", help="Colour: auto (on a terminal), always or never. Tables are drawn only "
             "on a terminal, or with always.")] = Color.auto,
    verbose: Annotated[int, typer.Option(
        "--verbose", "-v", count=True, help="Log more; -vv for debug output.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log errors only.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """A background job queue for shell commands."""
    if db_url is not None:
        os.environ["QUEUECTL_DB_URL"] = db_url
    if home is not None:
        os.environ["QUEUECTL_HOME"] = str(home)
    State.style = Style(color.value)
    State.verbosity = -1 if quiet else verbose
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        State.verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# Database ---------------------------------------------------------------------------------

@app.command("init-db")
def init_db() -> None:
    """Create the database or migrate it to the current schema."""
    from queuectl import db

    engine = db.create_queue_engine()
    try:
        db.upgrade_schema(engine)
        revision = db.current_revision(engine)
    except Exception as exc:
        if _is_connection_failure(exc):
            raise db.unavailable(engine.url, exc) from exc
        raise
    stderr(f"database {db.display_url(engine.url)} is at schema revision {revision}")


# Jobs -------------------------------------------------------------------------------------

@app.command()
def enqueue(
    job: Annotated[Optional[list[str]], typer.Argument(
        help='The job as a JSON object (\'{"id":"job1","command":"sleep 2"}\'), a shell '
             "command line, or after --, a program and its arguments, quoted for you.",
        show_default=False)] = None,
    file: Annotated[Optional[str], typer.Option(
        "--file", "-f", help="Read one JSON job per line from this file ('-' for stdin); "
                             "all of them are enqueued or none.")] = None,
    job_id: Annotated[Optional[str], typer.Option("--id", help="The job's id.")] = None,
    priority: Annotated[Optional[int], typer.Option(
        "--priority", "-p", help="Higher runs first; default 0.")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", help="Queue name.")] = None,
    run_at: Annotated[Optional[str], typer.Option(
        "--run-at", help="Run no earlier than this ISO 8601 time (local if no offset).")] = None,
    delay: Annotated[Optional[float], typer.Option(
        "--delay", help="Run no earlier than this many seconds from now.")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="Seconds before an attempt is killed.")] = None,
    max_retries: Annotated[Optional[int], typer.Option(
        "--max-retries", help="Attempts before the job moves to the dead letter queue.")] = None,
) -> None:
    """Add jobs to the queue and print their ids.

    Options set the fields of every job; a field in a JSON job overrides its option.
    """
    from queuectl import enqueueing

    options = {"id": job_id, "priority": priority, "queue": queue, "run_at": run_at,
               "delay": delay, "timeout": timeout, "max_retries": max_retries}
    options = {name: value for name, value in options.items() if value is not None}
    if file is not None:
        if job:
            raise InvalidInput("give jobs either as an argument or with --file, not both")
        if "id" in options:
            raise InvalidInput("--id cannot be used with --file, because ids must be unique")
        specs = _read_job_file(file, options)
    elif job:
        specs = [_job_from_arguments(job, options)]
    else:
        raise InvalidInput("give a JSON job, a command, or --file with one JSON job per line")
    engine = _engine()
    if len(specs) > 1 and sys.stderr.isatty():
        ids = _enqueue_with_progress(engine, specs)
    else:
        ids = enqueueing.enqueue_many_ids(engine, specs)
    sys.stdout.write("\n".join(ids) + "\n")


def _job_from_arguments(arguments: list[str], options: dict):
    """Build a job from the command line: JSON, one shell command line, or an argv to quote."""
    from queuectl import spec

    if len(arguments) == 1 and arguments[0].lstrip()[:1] in ("{", "["):
        return spec.parse_payload(arguments[0], options)
    if len(arguments) == 1:
        command = arguments[0]
    else:
        command = spec.command_from_argv(arguments)
    return spec.validate_payload({**options, "command": command})


def _enqueue_with_progress(engine, specs: list) -> list[str]:
    from rich.console import Console
    from rich.progress import Progress

    from queuectl import enqueueing

    # The bar goes to stderr, the terminal that asked for it, so stdout keeps only the ids.
    console = Console(stderr=True, no_color=True if State.style.color == "never" else None)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("enqueueing", total=len(specs))
        return enqueueing.enqueue_many_ids(
            engine, specs, on_progress=lambda done: progress.update(task, completed=done))


def _read_job_file(name: str, options: dict) -> list:
    from queuectl import spec

    try:
        stream = sys.stdin if name == "-" else open(name, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {name!r}: {exc.strerror}") from None
    specs = []
    line_of_id: dict[str, int] = {}
    with stream:
        try:
            for number, line in enumerate(stream, start=1):
                if number == 1:
                    # Editors on Windows often start UTF-8 files with a byte-order mark.
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    job = spec.parse_payload(line, options)
                except InvalidInput as exc:
                    raise InvalidInput(f"line {number} of {name}: {exc.message}") from None
                if job.id in line_of_id:
                    raise InvalidInput(f"line {number} of {name}: job id {job.id!r} is already "
                                       f"on line {line_of_id[job.id]}; give each job its own id")
                if job.id is not None:
                    line_of_id[job.id] = number
                specs.append(job)
        except UnicodeDecodeError:
            raise InvalidInput(f"{name!r} is not UTF-8 text") from None
    if not specs:
        raise InvalidInput(f"no jobs in {name!r}; write one JSON object per line")
    return specs


@app.command("list")
def list_command(
    state: Annotated[Optional[str], typer.Option(
        "--state", "-s", help="Only jobs in this state: pending, processing, completed, "
                              "failed, dead or cancelled.")] = None,
    queue: Annotated[Optional[str], typer.Option("--queue", help="Only jobs of this queue.")] = None,
    limit: Annotated[int, typer.Option(
        "--limit", "-n", min=0, help="Show at most this many jobs, newest first; 0 for all.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    from queuectl import jobs, output

    selected = jobs.parse_state(state) if state is not None else None
    if queue is not None:
        from queuectl.spec import validate_queue_name

        validate_queue_name(queue)
    found = jobs.list_jobs(_engine(), selected, queue, limit or None)
    if as_json:
        output.print_json([output.job_summary(job) for job in found])
        return
    if not found:
        state_name = f" {selected.value}" if selected else ""
        stderr(f"no{state_name} jobs; add one with: queuectl enqueue '{{\"command\":\"echo hi\"}}'")
        return
    rows = [(job.id, job.state, f"{job.attempts}/{job.max_retries}", job.queue, job.priority,
             output.local_time(job.run_at), job.command, job.last_error or "")
            for job in found]
    output.print_table(State.style, None, ["ID", "STATE", "ATTEMPTS", "QUEUE", "PRIORITY",
                                           "RUN AT", "COMMAND", "LAST ERROR"], rows)


@app.command()
def show(
    job_id: Annotated[str, typer.Argument(help="The job's id.", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Show every field of one job, with the tail of its output."""
    from queuectl import jobs, output

    detail = output.job_detail(jobs.get_job(_engine(), job_id))
    if as_json:
        output.print_json(detail)
        return
    job_output = detail.pop("output") or ""
    rows = [(key, "" if value is None else value) for key, value in detail.items()]
    output.print_table(State.style, f"job {job_id}", ["FIELD", "VALUE"], rows)
    if job_output:
        tail = output.escape_controls(job_output.rstrip("\n"), keep="\n\t")
        sys.stdout.write("--- output (tail) ---\n" + tail + "\n")


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Show how many jobs are in each state, and the live workers."""
    from queuectl import jobs, output, workers

    engine = _engine()
    counts = jobs.count_by_state(engine)
    alive = workers.list_workers(engine)
    now = output.utcnow()
    worker_rows = [
        {"name": record.name, "host": record.hostname, "pid": record.pid,
         "queues": record.queues, "current_job": current,
         "started_at": output.iso(record.started_at),
         "heartbeat_age_seconds": round((now - record.heartbeat_at).total_seconds(), 1)}
        for record, current in alive
    ]
    if as_json:
        output.print_json({"jobs": {**counts, "total": sum(counts.values())},
                           "workers": worker_rows})
        return
    output.print_table(State.style, "Jobs", ["STATE", "COUNT"],
                       [*counts.items(), ("total", sum(counts.values()))])
    if not worker_rows:
        stderr("no workers running; start some with: queuectl worker start --count 2")
        return
    output.print_table(
        State.style, "Workers",
        ["WORKER", "HOST", "PID", "QUEUES", "CURRENT JOB", "STARTED", "HEARTBEAT"],
        [(row["name"], row["host"], row["pid"], row["queues"], row["current_job"] or "idle",
          output.local_time(record.started_at), f"{output.age(record.heartbeat_at, now)} ago")
         for row, (record, _) in zip(worker_rows, alive)],
    )


JobIds = Annotated[list[str], typer.Argument(help="Job ids.", show_default=False)]


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="The job's id.", show_default=False)],
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing new output until the job finishes.")] = False,
) -> None:
    """Print a job's captured output (the tail of its stdout and stderr)."""
    import time

    from queuectl import jobs
    from queuectl.models import JobState

    engine = _engine()
    job = jobs.get_job(engine, job_id)
    printed = job.output or ""
    sys.stdout.write(printed)
    sys.stdout.flush()
    while follow and job.state in (JobState.PENDING.value, JobState.PROCESSING.value,
                                   JobState.FAILED.value):
        time.sleep(0.5)
        job = jobs.get_job(engine, job_id)
        current = job.output or ""
        # A running job's output is empty until its worker first stores it: wait for that.
        waiting_for_output = job.state == JobState.PROCESSING.value and not current
        if current != printed and not waiting_for_output:
            sys.stdout.write(_new_text(printed, current))
            sys.stdout.flush()
            printed = current
    if printed and not printed.endswith("\n"):
        sys.stdout.write("\n")


def _new_text(printed: str, current: str) -> str:
    """Return the part of the current output tail that follows what was printed already."""
    if current.startswith(printed):
        return current[len(printed):]
    anchor = printed[-256:]
    position = current.rfind(anchor) if anchor else -1
    if position >= 0:
        return current[position + len(anchor):]
    return "\n[output skipped]\n" + current  # the tail moved past what was printed


@app.command()
def cancel(job_ids: JobIds) -> None:
    """Cancel jobs: waiting ones never run, running ones have their processes stopped."""
    from queuectl import jobs

    previous = jobs.cancel(_engine(), list(dict.fromkeys(job_ids)))
    for job_id, state in previous.items():
        sys.stdout.write(f"{job_id}\n")
        if state == "processing":
            stderr(f"job {job_id} was processing; its worker stops it within seconds "
                   "if it has started")
    stderr(f"cancelled {len(previous)} job(s)")


@app.command()
def retry(job_ids: JobIds) -> None:
    """Run failed, dead or cancelled jobs again now, with their attempts reset to 0."""
    from queuectl import jobs

    ids = jobs.retry(_engine(), list(dict.fromkeys(job_ids)))
    sys.stdout.write("".join(f"{job_id}\n" for job_id in ids))
    stderr(f"moved {len(ids)} job(s) back to pending")


@app.command()
def wait(
    job_ids: JobIds,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", min=0, help="Give up after this many seconds (exit 1).")] = None,
) -> None:
    """Wait until the jobs finish; exit 0 if all completed, 1 otherwise."""
    import time

    from queuectl import jobs
    from queuectl.models import FINAL_STATES

    engine = _engine()
    ids = list(dict.fromkeys(job_ids))
    deadline = time.monotonic() + timeout if timeout is not None else None
    delay = 0.05
    while True:
        states = jobs.states_of(engine, ids)
        unfinished = [job_id for job_id, state in states.items() if state not in FINAL_STATES]
        if not unfinished:
            break
        if deadline is not None and time.monotonic() >= deadline:
            stderr(f"error: timed out after {timeout:g} s; {len(unfinished)} job(s) unfinished, "
                   f"such as {unfinished[0]!r}")
            raise typer.Exit(EXIT_FAILED)
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    for job_id, state in states.items():
        sys.stdout.write(f"{job_id}\t{state}\n")
    if any(state != "completed" for state in states.values()):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def prune(
    older_than: Annotated[str, typer.Option(
        "--older-than", help="Age of the finished jobs to delete, such as 30m, 12h or 7d.")],
) -> None:
    """Delete finished jobs (completed, cancelled and dead) older than an age."""
    from queuectl import jobs
    from queuectl.models import JobState

    age = _parse_age(older_than)
    deleted = jobs.delete_finished(
        _engine(), (JobState.COMPLETED, JobState.CANCELLED, JobState.DEAD), age)
    stderr(f"deleted {deleted} finished job(s) older than {older_than}")


def _parse_age(text: str, name: str = "age"):
    """Parse an age such as 90s, 30m, 12h, 7d or 2w; `name` is the value's name in errors."""
    import re
    from datetime import timedelta

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise InvalidInput(f"invalid {name} {text!r}; use a number and a unit, such as 30m, "
                           "12h or 7d (units: s, m, h, d, w)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    try:
        return timedelta(**{unit[match.group(2)]: float(match.group(1))})
    except OverflowError:
        raise InvalidInput(f"{name} {text!r} is too large; use at most 1000 years") from None


# Dead letter queue ------------------------------------------------------------------------

@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(
        "--limit", "-n", min=0, help="Show at most this many jobs, newest first; 0 for all.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List the jobs that ran out of attempts."""
    from queuectl import jobs, output
    from queuectl.models import JobState

    found = jobs.list_jobs(_engine(), JobState.DEAD, None, limit or None)
    if as_json:
        output.print_json([output.job_summary(job) for job in found])
        return
    if not found:
        stderr("the dead letter queue is empty")
        return
    rows = [(job.id, job.attempts, job.exit_code, output.local_time(job.updated_at),
             job.command, job.last_error or "") for job in found]
    output.print_table(State.style, None, ["ID", "ATTEMPTS", "EXIT CODE", "DIED AT", "COMMAND",
                                           "LAST ERROR"], rows)


@dlq_app.command("retry")
def dlq_retry(
    job_ids: Annotated[Optional[list[str]], typer.Argument(
        help="Ids of dead jobs to run again.", show_default=False)] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Retry every dead job.")] = False,
) -> None:
    """Move dead jobs back to pending with their attempts reset to 0."""
    from queuectl import jobs

    engine = _engine()
    if retry_all == bool(job_ids):
        raise InvalidInput("give the ids of dead jobs to retry, or --all")
    ids = jobs.dead_job_ids(engine) if retry_all else list(dict.fromkeys(job_ids))
    if not ids:
        stderr("the dead letter queue is empty; nothing to retry")
        return
    jobs.retry_dead(engine, ids)
    for job_id in ids:
        sys.stdout.write(f"{job_id}\n")
    stderr(f"moved {len(ids)} job(s) from the DLQ back to pending")


@dlq_app.command("purge")
def dlq_purge() -> None:
    """Delete every job in the dead letter queue."""
    from queuectl import jobs
    from queuectl.models import JobState

    deleted = jobs.delete_finished(_engine(), (JobState.DEAD,))
    stderr(f"deleted {deleted} dead job(s)")


# Configuration ----------------------------------------------------------------------------

@config_app.command("get")
def config_get(key: Annotated[str, typer.Argument(help="A key such as max_retries.")]) -> None:
    """Print one setting's value."""
    from queuectl import config

    config.lookup(key)  # an unknown key is invalid input even when the database is down
    sys.stdout.write(f"{config.format_value(config.get_value(_engine(), key))}\n")


# A value such as -1 is not an option: it reaches the range check, which names the range.
@config_app.command("set", context_settings={"ignore_unknown_options": True})
def config_set(
    key: Annotated[str, typer.Argument(help="A key such as max_retries or max-retries.")],
    value: Annotated[str, typer.Argument(help="The new value.")],
) -> None:
    """Validate and store a setting; running workers pick it up within seconds."""
    from queuectl import config

    setting = config.lookup(key)
    setting.parse(value)
    canonical, parsed = config.set_value(_engine(), key, value)
    stderr(f"{canonical} = {config.format_value(parsed)}")


@config_app.command("list")
def config_list(as_json: JsonOption = False) -> None:
    """List every setting with its value, default and meaning."""
    from queuectl import config, output

    entries = config.list_values(_engine())
    if as_json:
        output.print_json({setting.key: {"value": value, "default": setting.default,
                                         "stored": stored, "description": setting.help}
                           for setting, value, stored in entries})
        return
    rows = [(setting.key, config.format_value(value), config.format_value(setting.default),
             setting.help) for setting, value, _ in entries]
    output.print_table(State.style, None, ["KEY", "VALUE", "DEFAULT", "DESCRIPTION"], rows)


# Workers ----------------------------------------------------------------------------------

def _queue_list(value: Optional[str]) -> Optional[list[str]]:
    from queuectl.spec import QUEUE_NAME

    if value is None or value.strip() == "*":
        return None
    names = [name.strip() for name in value.split(",")]
    for name in names:
        if not QUEUE_NAME.fullmatch(name):
            raise InvalidInput(f"invalid queue name {name!r} in --queue; use names such as "
                               "default or emails, separated by commas")
    return names


CountOption = Annotated[int, typer.Option("--count", "-c", min=1, max=256,
                                          help="Number of worker processes.")]
QueueOption = Annotated[Optional[str], typer.Option(
    "--queue", help="Comma-separated queues to take jobs from. Default: all queues.")]


@worker_app.command("start")
def worker_start(count: CountOption = 1, queue: QueueOption = None) -> None:
    """Start workers in the background and print their PIDs."""
    from queuectl import supervisor

    queues = _queue_list(queue)
    _engine()  # fails here, in the foreground, if the database is unusable
    record = supervisor.start_background(count, queues)
    for pid in record["workers"].values():
        sys.stdout.write(f"{pid}\n")
    stderr(f"started {count} worker(s) under supervisor {record['pid']}; "
           f"log: {supervisor.log_path()}")


@worker_app.command("run")
def worker_run(
    count: CountOption = 1,
    queue: QueueOption = None,
    burst: Annotated[bool, typer.Option(
        "--burst", help="Exit once no job is pending, waiting for a retry or running.")] = False,
) -> None:
    """Run workers in the foreground; Ctrl-C stops them gracefully, a second Ctrl-C forces."""
    from queuectl import supervisor

    from queuectl import db

    queues = _queue_list(queue)
    _engine()
    # The supervisor forks its workers: it must hold no database connection, because a
    # SQLite connection inherited across fork can corrupt the database file.
    db.reset_engine()
    _log_to_file(supervisor.log_path())
    raise typer.Exit(supervisor.Supervisor(count, queues, burst).run())


@worker_app.command("stop")
def worker_stop(
    force: Annotated[bool, typer.Option(
        "--force", help="Kill the running jobs and put them back in the queue.")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", min=0, help="Seconds to wait for running jobs before forcing.")] = None,
    all_hosts: Annotated[bool, typer.Option(
        "--all-hosts", help="Also ask the workers of every other host to stop, through the "
                            "database.")] = False,
) -> None:
    """Stop this host's workers; each finishes its current job first."""
    from queuectl import supervisor, workers

    if all_hosts:
        requested = workers.request_stop_all(_engine())
        stderr(f"asked {requested} worker(s) on all hosts to stop")
    stopped = supervisor.stop_local(timeout, force)
    if not stopped:
        if not all_hosts:
            stderr("no workers are running on this host")
        return
    count = sum(len(record.get("workers", {})) for record in stopped)
    stderr(f"stopped {count} worker(s)")


def _log_to_file(path: Path) -> None:
    """Send the workers' log lines to the log file too, at INFO or the chosen verbosity."""
    from queuectl.supervisor import LOG_FORMAT

    level = logging.DEBUG if State.verbosity >= 2 else logging.INFO
    root_logger = logging.getLogger()
    root_logger.setLevel(min(level, root_logger.level or level))
    formatter = logging.Formatter(LOG_FORMAT)
    for handler in root_logger.handlers:
        handler.setFormatter(formatter)
        handler.setLevel(level if State.verbosity >= 0 else logging.ERROR)
    handler = logging.FileHandler(path, encoding="utf-8")
    os.chmod(path, 0o600)
    handler.setFormatter(formatter)
    handler.setLevel(level)
    root_logger.addHandler(handler)


# Watching ---------------------------------------------------------------------------------

@app.command()
def top(
    once: Annotated[bool, typer.Option(
        "--once", help="Print one frame and exit; the default when stdout is not a "
                       "terminal.")] = False,
) -> None:
    """Watch the queue live: counts, throughput, workers and recent failures; q quits."""
    from rich.console import Console

    from queuectl import db, snapshot
    from queuectl import top as top_view

    engine = _engine()
    colored = State.style.colored()
    if once or not sys.stdout.isatty():
        # Like tables: escape sequences only with colour, which --color always forces.
        console = Console(no_color=not colored, force_terminal=colored, highlight=False)
        console.print(top_view.render(snapshot.take_snapshot(engine)))
        return
    console = Console(no_color=not colored, highlight=False)
    try:
        top_view.run(lambda: snapshot.take_snapshot(engine),
                     lambda exc: db.unavailable(engine.url, exc).message, console)
    except KeyboardInterrupt:
        pass  # Ctrl-C leaves the view like q does


@app.command("metrics")
def metrics_command(
    window: Annotated[str, typer.Option(
        "--window", "-w", help="How far back to look, such as 15m, 2h or 1d.")] = "60m",
    as_json: JsonOption = False,
) -> None:
    """Show completed and failed jobs per minute, success rate and latency per queue."""
    from queuectl import metrics, output

    report = metrics.compute_metrics(_engine(), _parse_window(window))
    if as_json:
        output.print_json(report.to_dict())
        return
    if not report.queues:
        stderr(f"no job finished or failed in the last {window}; widen it with --window 24h")
        return
    rows = [_metrics_row(queue.queue, queue) for queue in report.queues]
    if len(report.queues) > 1:
        rows.append(_metrics_row("(all)", report.total))
    output.print_table(
        State.style, f"Last {window}",
        ["QUEUE", "COMPLETED", "FAILED", "COMPLETED/MIN", "FAILED/MIN", "SUCCESS",
         "WAIT P50", "WAIT P95", "RUN P50", "RUN P95"], rows)


def _parse_window(text: str):
    window = _parse_age(text, "window")
    if window.total_seconds() <= 0:
        raise InvalidInput(f"invalid window {text!r}; use a positive length such as 15m or 2h")
    return window


def _metrics_row(name: str, figures) -> tuple:
    rate = figures.success_rate
    return (name, figures.completed, figures.failed, f"{figures.completed_per_minute:.2f}",
            f"{figures.failed_per_minute:.2f}", "" if rate is None else f"{100 * rate:.1f}%",
            _seconds_text(figures.wait_p50), _seconds_text(figures.wait_p95),
            _seconds_text(figures.run_p50), _seconds_text(figures.run_p95))


def _seconds_text(seconds: float | None) -> str:
    """Format a duration: milliseconds below 1 s, seconds below 1 min, then 3m 5s."""
    from queuectl.output import duration

    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    return duration(seconds)


@app.command()
def dashboard(
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; anything but a loopback address serves the "
                       "network, with no authentication.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="TCP port to listen on; 0 picks a free one.")] = 8765,
) -> None:
    """Serve a read-only web dashboard, /api/status JSON and Prometheus /metrics."""
    from queuectl import dashboard as web

    server = web.create_server(_engine(), host, port)
    if not web.is_loopback(host):
        stderr(f"warning: the dashboard on {host} is open to the network with no "
               "authentication, and it shows every job's command")
    stderr(f"dashboard at {server.url} (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# Entry point ------------------------------------------------------------------------------

def _is_connection_failure(exc: BaseException) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def _click_exception_base() -> type[Exception]:
    """Return the ClickException class of the Click that this Typer uses.

    Newer Typer releases bundle their own copy of Click, so the class is taken from the
    ancestry of typer.BadParameter instead of being imported from `click`.
    """
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    return typer.BadParameter


def main() -> None:
    """Run the CLI: every expected error becomes one line on stderr and an exit code."""
    click_exception = _click_exception_base()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="queuectl", standalone_mode=False)
    except click_exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # a command group run without a subcommand prints its help
            sys.exit(exc.exit_code)
        # Usage errors: an unknown option, a missing argument, a value of the wrong type.
        context = getattr(exc, "ctx", None)
        path = context.command_path if context is not None else "queuectl"
        stderr(f"error: {exc.format_message().rstrip('.')}; see `{path} --help`")
        sys.exit(exc.exit_code)
    except typer.Abort:
        stderr("error: interrupted")
        sys.exit(130)
    except QueuectlError as exc:
        stderr(f"error: {exc.message}")
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        _stop_after_broken_pipe()
    except SystemExit as exc:
        # Click turns a broken pipe inside a command into exit status 1 without a message.
        if isinstance(exc.__context__, BrokenPipeError):
            _stop_after_broken_pipe()
        raise
    except Exception as exc:  # noqa: BLE001 - the last resort of the CLI
        sys.exit(_report_unexpected(exc))
    sys.exit(code if isinstance(code, int) else 0)


def _stop_after_broken_pipe() -> None:
    """Exit 0 after the reader went away (`queuectl list | head`), writing nothing more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


def _report_unexpected(exc: Exception) -> int:
    if _is_connection_failure(exc):
        from queuectl import db

        try:
            url = db.database_url()
        except QueuectlError:
            url = None
        if url is not None:
            stderr(f"error: {db.unavailable(url, exc).message}")
            return EXIT_FAILED
    log.debug("unexpected error", exc_info=exc)
    stderr(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
           " (rerun with -vv for the traceback)")
    if State.verbosity >= 2:
        import traceback

        traceback.print_exception(exc)
    return EXIT_FAILED

