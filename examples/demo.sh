#!/usr/bin/env bash
# Run a small batch of jobs through queuectl and show the result.
#
# The batch (examples/demo-jobs.jsonl) creates two files, compresses them with gzip,
# checksums the archives with sha256sum, runs one slow job, and has one job that fails on
# every attempt and ends in the dead letter queue.
#
# With neither QUEUECTL_HOME nor QUEUECTL_DB_URL set, the demo uses a fresh SQLite database
# in a new temporary folder, so it touches nothing of yours. With either set, it uses that
# queue. It then stores backoff_base=1.5 there, its workers run every job of that queue and
# wait for the scheduled ones, and enqueueing fails with exit status 2 if the demo's job
# ids are taken already.
#
# Usage: bash examples/demo.sh   (with queuectl on PATH, for example from .venv/bin)
set -euo pipefail

examples_dir=$(cd "$(dirname "$0")" && pwd)
jobs_file=$examples_dir/demo-jobs.jsonl

if ! command -v queuectl >/dev/null 2>&1; then
    echo "demo.sh: queuectl is not on PATH; install it with 'pip install -e .' from the" \
         "repository root, or run: PATH=\"\$PWD/.venv/bin:\$PATH\" bash examples/demo.sh" >&2
    exit 1
fi

demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/queuectl-demo.XXXXXX")
export QUEUECTL_HOME=${QUEUECTL_HOME:-$demo_dir/home}

# Workers run each command in the folder they were started from, so the jobs' files land
# in this work folder.
work_dir=$demo_dir/work
mkdir "$work_dir"
cd "$work_dir"

print_step() {
    printf '\n==> %s\n' "$*"
}

print_step "queuectl init-db"
queuectl init-db

# The default base of 2 waits 2 s and then 4 s between attempts. A base of 1.5 waits 1.5 s
# and then 2.25 s, so the failing job reaches the dead letter queue within a few seconds.
print_step "queuectl config set backoff_base 1.5"
queuectl config set backoff_base 1.5

# queuectl has no dependencies between jobs. The gzip and checksum jobs start later through
# their "delay" field, and one that starts before its input exists fails and is retried.
print_step "queuectl enqueue --file $jobs_file"
queuectl enqueue --file "$jobs_file"

print_step "queuectl worker run --count 3 --burst   (exits once every job has finished)"
queuectl worker run --count 3 --burst

print_step "files the jobs wrote in $work_dir"
ls -l
cat SHA256SUMS

print_step "queuectl status"
queuectl status

print_step "queuectl dlq list"
queuectl dlq list

print_step "done"
echo "queue home: $QUEUECTL_HOME"
echo "worker log: $QUEUECTL_HOME/worker.log"
printf 'see one job: QUEUECTL_HOME=%q queuectl show demo-always-fails\n' "$QUEUECTL_HOME"
printf 'remove the demo files: rm -r %q\n' "$demo_dir"
