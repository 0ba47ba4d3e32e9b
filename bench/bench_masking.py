"""Throughput of the output masker (`Masker.mask_text`) on realistic log text, in MB/s.

The text is what steps print: journal lines, nginx access logs, application logs with key=value
pairs and JSON, `ps`/`df` tables, package-manager output, with a credential on about one line
in 200 (connection strings, tokens, `mysql -p...`, `curl -u ...`) and two registered secrets
live. It is masked as a step's output is: in chunks of 64 KiB cut at line ends (the live
output tap's unit), and once per line (the log filter's unit). Best of `--rounds` (the
machine is shared), as wall-clock MB/s and as MB per CPU-second (what one core does, which
a loaded machine does not distort); the goal is 50 MB/s for chunks. Runs in a few seconds:
`.venv/bin/python bench/bench_masking.py [--mb 8] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsconductor.safety.masking import RULES, Masker

GOAL_MB_S = 50.0
CHUNK = 64 * 1024

TEMPLATES = [
    "{ts} web-{n:02d} nginx[{pid}]: 10.0.{a}.{b} - - [03/Dec/2026:11:{m:02d}:{s:02d} +0000] "
    '"GET /api/v1/items/{id}?page={a}&sort=desc HTTP/1.1" 200 {size} "-" "curl/8.5.0"',
    "{ts} web-{n:02d} systemd[1]: Started nginx.service - A high performance web server.",
    "{ts} db-{n:02d} postgres[{pid}]: LOG:  checkpoint complete: wrote {size} buffers "
    "({a}.{b}%); 0 WAL file(s) added, 0 removed, 1 recycled; write={a}.{m:03d} s",
    "{ts} app-{n:02d} worker[{pid}]: level=info msg=\"job finished\" job_id={uuid} "
    "duration_ms={size} rows={a} status=ok host=app-{n:02d}.prod.example.com",
    '{{"ts": "{ts}", "level": "INFO", "logger": "opsc.steps", "step": "step_{a:03d}", '
    '"execution": "{uuid}", "event": "completed", "exit_code": 0, "bytes": {size}}}',
    "root      {pid}  0.{a}  1.{b} {size} {m}  ?  Ss   11:{m:02d}   0:0{a} /usr/sbin/nginx -g "
    "daemon on; master_process on;",
    "/dev/sda{a}        98G   {b}G   {m}G  {s}% /var/lib/docker/overlay2/{sha}/merged",
    "Get:{a} http://archive.ubuntu.com/ubuntu noble-updates/main amd64 libssl3t64 amd64 "
    "3.0.13-0ubuntu3.{b} [{size} kB]",
    "{ts} k8s-{n:02d} kubelet[{pid}]: I1203 pod_workers.go:{size}] \"SyncPod\" "
    "pod=\"prod/api-7d9f{b}c-x{a}q\" podUID=\"{uuid}\" image=\"registry/api@sha256:{sha}\"",
    "commit {sha1} Author: Ops Bot <ops@example.com> Date: Thu Dec 3 11:{m:02d} 2026 "
    "fix(deploy): retry on 503 from the load balancer",
]
CREDENTIALS = [
    "{ts} app-{n:02d} worker[{pid}]: connecting to postgresql://app:S3cr3t-{size}@db:5432/app",
    "+ mysql -u root -pR00tPa55{a} -h db-{n:02d} -e 'SHOW PROCESSLIST'",
    "+ curl -sS -u deploy:Tok-{size}-x https://nexus.internal/service/rest/v1/status",
    "export GITHUB_TOKEN=ghp_{tok36}",
    "{ts} app: Authorization: Bearer {tok36}",
    "npm notice token npm_{tok36}",
]


def log_text(megabytes: float, seed: int = 7) -> str:
    rng = random.Random(seed)
    alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    out: list[str] = []
    size = 0
    target = int(megabytes * 1024 * 1024)
    while size < target:
        pool = CREDENTIALS if rng.random() < 0.005 else TEMPLATES
        line = rng.choice(pool).format(
            ts=f"2026-12-03T11:{rng.randrange(60):02d}:{rng.randrange(60):02d}."
               f"{rng.randrange(1000):03d}Z",
            n=rng.randrange(40), pid=rng.randrange(100, 99999), a=rng.randrange(256),
            b=rng.randrange(256), m=rng.randrange(60), s=rng.randrange(60),
            id=rng.randrange(10**6), size=rng.randrange(100, 10**6),
            uuid=f"{rng.getrandbits(128):032x}", sha=f"{rng.getrandbits(256):064x}",
            sha1=f"{rng.getrandbits(160):040x}",
            tok36="".join(rng.choice(alnum) for _ in range(36)))
        out.append(line)
        size += len(line) + 1
    return "\n".join(out) + "\n"


def chunks(text: str, size: int = CHUNK) -> list[str]:
    """Pieces of about `size` characters, cut after a newline as the output tap cuts them."""
    out, start = [], 0
    while start < len(text):
        end = text.rfind("\n", start, start + size) + 1 or min(len(text), start + size)
        out.append(text[start:end])
        start = end
    return out


def rate(masker: Masker, pieces: list[str], rounds: int) -> tuple[float, float, int]:
    """(best wall-clock MB/s, best CPU-time MB/s over `rounds`, masks in the last round).
    CPU time is what one core spends; wall time also counts waiting for a shared core."""
    total = sum(len(p.encode()) for p in pieces) / 1e6
    best = best_cpu = 0.0
    masked = 0
    for _ in range(rounds):
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        out = [masker.mask_text(p) for p in pieces]
        elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu
        best = max(best, total / elapsed)
        best_cpu = max(best_cpu, total / max(cpu_used, 1e-9))
        masked = sum(o.count("***") for o in out)
    return best, best_cpu, masked


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0, help="MiB of log text (default 8)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    text = log_text(args.mb)
    masker = Masker(use_env=False).with_secrets(["canary-secret-value-1", "another-live-one"])
    lines = text.splitlines(keepends=True)
    chunk_rate, chunk_cpu, chunk_masks = rate(masker, chunks(text), args.rounds)
    line_rate, line_cpu, _ = rate(masker, lines, args.rounds)
    mb = len(text.encode()) / 1e6
    print(f"masker: {len(RULES)} data rules; {mb:.1f} MB of log text, {len(lines)} lines, "
          f"{chunk_masks} credentials masked; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"  64 KiB chunks: {chunk_rate:6.1f} MB/s wall, {chunk_cpu:6.1f} MB/s per CPU-second"
          f"  (goal {GOAL_MB_S:g} MB/s: {'met' if chunk_cpu >= GOAL_MB_S else 'NOT met'})")
    print(f"  line by line:  {line_rate:6.1f} MB/s wall, {line_cpu:6.1f} MB/s per CPU-second"
          f"  ({line_cpu * len(lines) / mb:,.0f} lines per CPU-second)")
    return 0 if chunk_cpu >= GOAL_MB_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
