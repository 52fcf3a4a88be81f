#!/usr/bin/env python3
"""Durable runs on PostgreSQL: flow (in place, and with 1, 2 and 4 worker processes) beside
DBOS for Python on the same server, in one run.

    python3 scripts/bench-postgres.py [--url URL] [--runs N] [--workflows N]
                                      [--processes 1,2,4] [--concurrency N] [--pool N]
                                      [--dbos-runs N] [--skip-dbos] [--profile]

1. Makes (or reuses) the venv of `scripts/bench-durable.py` under the cargo target dir, with
   `dbos` pinned to the same version.
2. Runs `cargo run --release --example pg_bench` (`examples/pg_bench.rs`): a durable commit
   alone, the 10-step workflow run one at a time in place (every commit durable), then 1,000
   of them enqueued at once and executed by 1, 2 and 4 worker processes. It works in a
   database of its own (`flow_bench` on the server of `--url`, created and dropped).
3. Runs the same workflow with DBOS (10 `@DBOS.step()`s adding one, in a
   `@DBOS.workflow()`), its system database `flow_bench_dbos` on the same server (created
   by DBOS, dropped after), in a child process with the venv's python: `--dbos-runs` runs
   one after another (each under `SetWorkflowID`), then `--workflows` workflows started at
   once with `DBOS.start_workflow` (each on a thread of DBOS's executor), then as many
   enqueued at once on a DBOS queue (`DBOS.register_queue`, `worker_concurrency` =
   `--concurrency`, polled every 0.1 s) and executed by 1, 2 and 4 DBOS processes (this one
   and `--processes` - 1 more, each its own executor id); the end is seen by counting the
   finished workflows every 10 ms.
4. Prints the tables, the ratios, the goals, and a JSON line.

Per-step latency is a run's wall time / 10; steps/s = 10 x workflows / (first start or
enqueue .. last workflow finished).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ left in scripts/ by the import below
_spec = importlib.util.spec_from_file_location("bench_durable", os.path.join(HERE, "bench-durable.py"))
bench_durable = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_durable)

DBOS_VERSION = bench_durable.DBOS_VERSION
ROOT = bench_durable.ROOT
STEPS = 10
DBOS_DATABASE = "flow_bench_dbos"
pct, fmt_n, fmt_us = bench_durable.pct, bench_durable.fmt_n, bench_durable.fmt_us


def with_database(url, database):
    """`url` with its database replaced (a `postgres://` URL, no query string)."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}" + (f"?{query}" if query else "")


# ---------------------------------------------------------------------------------------
# The DBOS side, run in a child process with the venv's python (DBOS is a process singleton).


def dbos_define():
    """The 10-step workflow, for DBOS: (chain10, the system database's URL, DBOS)."""
    from dbos import DBOS

    def make_step(i):
        def add_one(x: int) -> int:
            return x + 1

        add_one.__name__ = add_one.__qualname__ = f"s{i}"
        return DBOS.step(name=f"s{i}")(add_one)

    s1, s2, s3, s4, s5, s6, s7, s8, s9, s10 = [make_step(i) for i in range(1, 11)]

    @DBOS.workflow()
    def chain10(x: int) -> int:
        x = s1(x)
        x = s2(x)
        x = s3(x)
        x = s4(x)
        x = s5(x)
        x = s6(x)
        x = s7(x)
        x = s8(x)
        x = s9(x)
        return s10(x)

    return chain10


def dbos_launch(args, executor):
    """Launches DBOS in this process as executor `executor`; returns its queue."""
    from dbos import DBOS

    DBOS(
        config={
            "name": "bench-postgres",
            "system_database_url": dbos_sys_url(args),
            "run_admin_server": False,
            "log_level": "ERROR",
            "application_version": "bench",
            "executor_id": executor,
        }
    )
    DBOS.launch()
    return DBOS.register_queue(
        "bench", worker_concurrency=args.concurrency, polling_interval_sec=0.1
    )


def dbos_sys_url(args):
    return with_database(args.url, DBOS_DATABASE).replace("postgres://", "postgresql://")


def dbos_queue_worker(args):
    """An extra DBOS process serving the queue until its standard input closes."""
    dbos_define()
    dbos_launch(args, f"bench-worker-{args.dbos_queue_worker}")
    print("ready", flush=True)
    sys.stdin.read()
    from dbos import DBOS

    DBOS.destroy()


def dbos_child(args):
    import psycopg

    from dbos import DBOS, SetWorkflowID

    chain10 = dbos_define()
    admin_url = with_database(args.url, "postgres").replace("postgres://", "postgresql://")

    def drop_database():
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{DBOS_DATABASE}" WITH (FORCE)')

    drop_database()
    sys_url = dbos_sys_url(args)
    queue = dbos_launch(args, "bench-main")
    with psycopg.connect(sys_url) as c:
        sync = c.execute("SHOW synchronous_commit").fetchone()[0]

    for i in range(10):  # warm-up
        with SetWorkflowID(f"warm-{i}"):
            assert chain10(0) == STEPS

    times = []
    start = time.perf_counter()
    for i in range(args.dbos_runs):
        t = time.perf_counter()
        with SetWorkflowID(f"seq-{i}"):
            out = chain10(i)
        times.append(time.perf_counter() - t)
        assert out == i + STEPS
    total = time.perf_counter() - start
    times.sort()

    def at_once(kind, processes=1):
        """`args.workflows` started at once, by `processes` processes (queue only)."""
        kids = [
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--dbos-queue-worker", str(k),
                 "--url", args.url, "--concurrency", str(args.concurrency)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for k in range(processes - 1)
        ]
        for k in kids:
            assert k.stdout.readline().strip() == "ready"
        prefix = f"{kind}{processes}-"
        count = (f"SELECT count(*) FROM dbos.workflow_status WHERE workflow_uuid LIKE "
                 f"'{prefix}%' AND status IN ('SUCCESS', 'ERROR')")
        n = args.workflows
        with psycopg.connect(sys_url, autocommit=True) as poll:
            start = time.perf_counter()
            handles = []
            for i in range(n):
                with SetWorkflowID(f"{prefix}{i}"):
                    if kind == "threads":
                        handles.append((i, DBOS.start_workflow(chain10, i)))
                    else:
                        handles.append((i, queue.enqueue(chain10, i)))
            while poll.execute(count).fetchone()[0] < n:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        errors = []
        for i, h in handles:
            try:
                assert h.get_result(polling_interval_sec=0.01) == i + STEPS
            except Exception as e:  # reported, not hidden
                errors.append(repr(e))
        for k in kids:
            k.stdin.close()
            k.wait()
        # Each workflow's own time, from DBOS's records (started .. updated, ms), and who ran it.
        with psycopg.connect(sys_url) as c:
            rows = c.execute(
                "SELECT updated_at - coalesce(started_at_epoch_ms, created_at), executor_id "
                "FROM dbos.workflow_status WHERE workflow_uuid LIKE %s",
                (f"{prefix}%",),
            ).fetchall()
        own = sorted(r[0] / STEPS for r in rows if r[0] is not None)
        by = {}
        for r in rows:
            by[r[1]] = by.get(r[1], 0) + 1
        return {
            "kind": kind,
            "processes": processes,
            "elapsed_s": elapsed,
            "steps_per_s": (n - len(errors)) * STEPS / elapsed,
            "step_p50_ms": pct(own, 0.5) if own else None,
            "finished_by": sorted(by.values(), reverse=True),
            "errors": errors[:3],
            "error_count": len(errors),
        }

    many = [at_once("threads")]
    for p in args.dbos_processes:
        many.append(at_once("queue", p))
    with psycopg.connect(sys_url) as c:
        step_rows = c.execute("SELECT count(*) FROM dbos.operation_outputs").fetchone()[0]
    DBOS.destroy()
    drop_database()
    print(
        json.dumps(
            {
                "synchronous_commit": sync,
                "runs": len(times),
                "step_p50_us": pct(times, 0.5) / STEPS * 1e6,
                "step_p99_us": pct(times, 0.99) / STEPS * 1e6,
                "seq_steps_per_s": len(times) * STEPS / total,
                "workflows": args.workflows,
                "worker_concurrency": args.concurrency,
                "many": many,
                "step_rows": step_rows,
            }
        )
    )


# ---------------------------------------------------------------------------------------
# The driver.


def run_flow(args):
    cmd = ["cargo", "run", "--release", "--quiet", "--example", "pg_bench", "--"]
    cmd += ["--url", args.url, "--runs", str(args.runs), "--workflows", str(args.workflows)]
    cmd += ["--processes", args.processes, "--concurrency", str(args.concurrency)]
    cmd += ["--pool", str(args.pool)] + (["--profile"] if args.profile else [])
    print("$ " + " ".join(cmd), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    report = None
    for line in out.splitlines():
        if line.startswith('{"flow_pg_bench"'):
            report = json.loads(line)["flow_pg_bench"]
        else:
            print("  " + line)
    if report is None:
        sys.exit("pg_bench printed no JSON line")
    return report


def run_dbos(python, args):
    cmd = [python, os.path.abspath(__file__), "--dbos-child", "--url", args.url]
    cmd += ["--dbos-runs", str(args.dbos_runs), "--workflows", str(args.workflows)]
    cmd += ["--concurrency", str(args.concurrency), "--processes", args.processes]
    print(f"$ dbos {DBOS_VERSION} on {with_database(args.url, DBOS_DATABASE)}", flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        return None, f"dbos failed (exit {p.returncode}): " + " | ".join(tail)
    return json.loads(lines[-1]), None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="postgres://postgres@127.0.0.1:5432/flow_bench")
    ap.add_argument("--runs", type=int, default=300, help="flow: runs one at a time")
    ap.add_argument("--workflows", type=int, default=1000, help="workflows started at once")
    ap.add_argument("--processes", default="1,2,4", help="flow: worker processes, each phase")
    ap.add_argument("--concurrency", type=int, default=64, help="flow: runs at once a worker")
    ap.add_argument("--pool", type=int, default=8, help="flow: connections a process")
    ap.add_argument("--dbos-runs", type=int, default=100, help="DBOS: runs one at a time")
    ap.add_argument("--skip-dbos", action="store_true")
    ap.add_argument("--profile", action="store_true", help="flow: time the store's functions")
    ap.add_argument("--dbos-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dbos-queue-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dbos_processes = [int(p) for p in args.processes.split(",")]
    if args.dbos_queue_worker is not None:
        return dbos_queue_worker(args)
    if args.dbos_child:
        return dbos_child(args)

    load_before = loadavg()
    python, why_not = (None, "skipped (--skip-dbos)") if args.skip_dbos else bench_durable.ensure_dbos()
    flow = run_flow(args)
    dbos, dbos_error = None, why_not
    if python:
        dbos, dbos_error = run_dbos(python, args)
    load_after = loadavg()

    print()
    print(f"PostgreSQL {flow['server_version']}, synchronous_commit = {flow['synchronous_commit']}"
          f" (DBOS's connections: {dbos['synchronous_commit'] if dbos else '-'}); "
          f"{flow['cores']} cores shared by client and server; load average {load_before} "
          f"before, {load_after} after")
    p = flow["probe"]
    print(f"A durable commit alone (1-row INSERT, no flow): p50 {fmt_us(p['commit_p50_us'])}, "
          f"p99 {fmt_us(p['commit_p99_us'])}; from {p['concurrent']} connections at once "
          f"{fmt_n(p['concurrent_commits_per_s'])} commits/s "
          f"({p['concurrent_wal_syncs_per_commit']:.3f} WAL fsyncs a commit)")
    print()
    print("| one run at a time | runs | step p50 | step p99 | steps/s | statements a run "
          "| WAL fsyncs a run |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = {"multi_thread": "flow, in place, multi-thread runtime",
             "current_thread": "flow, in place, current-thread runtime",
             "current_thread_async_commit":
                 "flow, in place, current-thread, `synchronous_commit=off` (not durable)"}
    for s in flow["single"]:
        print(f"| {names[s['runtime']]} | {s['runs']} | {fmt_us(s['step_p50_us'])} | "
              f"{fmt_us(s['step_p99_us'])} | {fmt_n(s['steps_per_s'])} | "
              f"{s['xacts_per_run']:.1f} | {s['wal_syncs_per_run']:.2f} |")
    if dbos:
        print(f"| DBOS {DBOS_VERSION} | {dbos['runs']} | {fmt_us(dbos['step_p50_us'])} | "
              f"{fmt_us(dbos['step_p99_us'])} | {fmt_n(dbos['seq_steps_per_s'])} | - | - |")
    print()
    n = flow["workers"][0]["workflows"] if flow["workers"] else args.workflows
    print(f"| {n:,} workflows started at once | seconds | of which enqueueing | steps/s "
          f"| step p50 within runs | wait in queue p50 | statements a run | WAL fsyncs a run "
          f"| client CPU | server CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in flow["workers"]:
        cpu = w["cpu"]
        cap = cpu["wall_s"] * cpu["cores"]
        print(f"| flow, {w['processes']} worker process{'es' if w['processes'] > 1 else ''} "
              f"x {w['concurrency']} runs | {w['elapsed_s']:.2f} | {w['enqueue_s']:.2f} | "
              f"{fmt_n(w['steps_per_s'])} | "
              f"{w['step_p50_ms']:.1f} ms | {w['queued_p50_ms']:.0f} ms | "
              f"{w['xacts_per_run']:.1f} | {w['wal_syncs_per_run']:.2f} | "
              f"{100 * cpu['client_s'] / cap:.0f}% | {100 * cpu['server_s'] / cap:.0f}% |")
    if dbos:
        for m in dbos["many"]:
            if m["kind"] == "threads":
                label = "`DBOS.start_workflow` (a thread each), 1 process"
            else:
                label = (f"a DBOS queue, {m['processes']} process{'es' if m['processes'] > 1 else ''}"
                         f" x {dbos['worker_concurrency']} workflows")
            step = m["step_p50_ms"]
            print(f"| DBOS {DBOS_VERSION}, {label} | {m['elapsed_s']:.2f} | - | "
                  f"{fmt_n(m['steps_per_s'])} | {f'{step:.1f} ms' if step is not None else '-'} "
                  f"| - | - | - | - | - |")
    for w in flow["workers"]:
        if w["functions"]:
            print()
            print(f"Server time in the store's functions, {w['processes']} worker process(es):")
            for f in w["functions"]:
                print(f"- {f['name']}: {f['calls_per_run']:.2f} calls a run, "
                      f"{f['self_ms']:.0f} ms self, {f['total_ms']:.0f} ms total")

    print()
    if dbos_error:
        print(f"- DBOS not measured: {dbos_error}")
    goals = []
    if dbos:
        for m in dbos["many"]:
            if m["errors"]:
                print(f"- DBOS {m['kind']}, {m['processes']} process(es): {m['error_count']} "
                      f"workflows failed: {m['errors'][0]}")
        best = max(dbos["many"], key=lambda m: m["steps_per_s"])
        best_dbos = best["steps_per_s"]
        print(f"- DBOS's best: {fmt_n(best_dbos)} steps/s ({best['kind']}, "
              f"{best['processes']} process(es)); runs by process: "
              + "; ".join(f"{m['kind']} x{m['processes']}: {m['finished_by']}" for m in dbos["many"]))
        best_flow = max(flow["workers"], key=lambda w: w["steps_per_s"])
        ratio = best_flow["steps_per_s"] / best_dbos
        for w in flow["workers"]:
            print(f"- flow with {w['processes']} worker process(es) vs DBOS's best: "
                  f"{w['steps_per_s'] / best_dbos:.1f}x the steps/s")
        single = flow["single"][0]
        print(f"- flow in place vs DBOS, one run at a time: step p50 "
              f"{dbos['step_p50_us'] / single['step_p50_us']:.1f}x lower")
        goals.append((f"(a) with workers, at least 20x DBOS's steps/s ({fmt_n(best_dbos)})",
                      f"{fmt_n(best_flow['steps_per_s'])} steps/s with "
                      f"{best_flow['processes']} process(es): {ratio:.1f}x", ratio >= 20))
    best_single = min(flow["single"][:2], key=lambda s: s["step_p50_us"])
    goals.append(("(b) one run at a time, every commit durable: at most 0.5 ms a step at p50",
                  f"{fmt_us(best_single['step_p50_us'])} ({best_single['runtime']}); "
                  f"a durable commit alone: {fmt_us(p['commit_p50_us'])}",
                  best_single["step_p50_us"] <= 500))
    print()
    print("| goal | measured | |")
    print("| --- | --- | --- |")
    for g, measured, ok in goals:
        print(f"| {g} | {measured} | **{'met' if ok else 'missed'}** |")
    print(json.dumps({"bench_postgres": {"flow": flow, "dbos": dbos, "dbos_version": DBOS_VERSION,
                                         "dbos_error": dbos_error, "load_before": load_before,
                                         "load_after": load_after}}))


if __name__ == "__main__":
    main()
