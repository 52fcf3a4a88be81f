#!/usr/bin/env python3
"""Durable runs on SQLite: flow beside DBOS for Python, and one fsync of this disk, in one run.

    python3 scripts/bench-durable.py [--dir PATH] [--runs N] [--rounds R] [--dbos-runs N]
                                     [--dbos-rounds R] [--skip-dbos]

1. Makes a venv under the cargo target dir (`$CARGO_TARGET_DIR` or `target/`) and installs
   `dbos` (pinned, DBOS_VERSION below) into it unless it is there already.
2. Measures fsync in Python: 4 KiB written at offset 0 of a file in `--dir`, then
   `os.fsync`, 200 times (p50), as `examples/durable_bench.rs` does in Rust.
3. Runs `cargo run --release --example durable_bench` (flow: the 10-step durable workflow,
   FULL and NORMAL, and the same workflow with no store) and reads its JSON line.
4. Runs the same workflow with DBOS (10 `@DBOS.step()`s adding one, in a `@DBOS.workflow()`),
   on DBOS's SQLite system database, in a child process with the venv's python, once per
   SQLite setting: `default` is DBOS as shipped (it sets no journal mode nor `synchronous`:
   SQLite's rollback journal, `synchronous=FULL`); `wal-full` and `wal-normal` add
   `journal_mode=WAL` and `synchronous=FULL`/`NORMAL` on every connection (an SQLAlchemy
   connect hook), the settings flow's store uses, for a like-for-like comparison.
   Sequential: `--dbos-runs` runs one after another (each under `SetWorkflowID`); concurrent:
   100 threads, each running `--dbos-rounds` workflows one after another.
5. Prints one table, the ratios, the goals, and a JSON line.

Per-step latency is a run's wall time / 10 (a run's own writes are spread over its steps:
flow writes 12 times a run, the run created, one commit a step, the run finished).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

DBOS_VERSION = "3.4.0"
STEPS = 10
CONCURRENT = 100

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
VENV = os.path.join(TARGET, "dbos-venv")
VENV_PY = os.path.join(VENV, "bin", "python")


def pct(sorted_values, p):
    return sorted_values[round((len(sorted_values) - 1) * p)]


def fsync_times(directory, n=200):
    """4 KiB written at offset 0, then fsync, `n` times: sorted seconds."""
    path = os.path.join(directory, "bench-durable-py-fsync.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    block = b"\x5a" * 4096
    os.pwrite(fd, block, 0)
    os.fsync(fd)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fsync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.remove(path)
    times.sort()
    return times


# ---------------------------------------------------------------------------------------
# The DBOS side, run in a child process with the venv's python (DBOS is a process singleton).


def dbos_child(args):
    import sqlalchemy as sa
    from sqlalchemy import event

    pragmas = {
        "default": [],
        "wal-full": ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"],
        "wal-normal": ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"],
    }[args.dbos_child]
    if pragmas:

        @event.listens_for(sa.engine.Engine, "connect")
        def _pragmas(dbapi_conn, _record):
            for p in pragmas:
                dbapi_conn.execute(p)

    from dbos import DBOS, SetWorkflowID

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

    path = os.path.join(args.dir, f"bench-durable-dbos-{args.dbos_child}.sqlite")
    for suffix in ["", "-wal", "-shm", "-journal"]:
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    DBOS(
        config={
            "name": "bench-durable",
            "system_database_url": "sqlite:///" + path,
            "run_admin_server": False,
            "log_level": "ERROR",
            "application_version": "bench",
        }
    )
    DBOS.launch()
    import sqlite3

    with sqlite3.connect(path) as c:
        journal = c.execute("PRAGMA journal_mode").fetchone()[0]

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

    errors = []

    def worker(t):
        try:
            for r in range(args.dbos_rounds):
                with SetWorkflowID(f"conc-{t}-{r}"):
                    assert chain10(r) == r + STEPS
        except Exception as e:  # reported, not hidden
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(CONCURRENT)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    conc_elapsed = time.perf_counter() - start
    conc_runs = CONCURRENT * args.dbos_rounds - len(errors)

    steps = 0
    with sqlite3.connect(path) as c:
        steps = c.execute("SELECT count(*) FROM operation_outputs").fetchone()[0]
    DBOS.destroy()
    for suffix in ["", "-wal", "-shm", "-journal"]:
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    print(
        json.dumps(
            {
                "mode": f"dbos {args.dbos_child}",
                "journal_mode": journal,
                "runs": len(times),
                "step_p50_us": pct(times, 0.5) / STEPS * 1e6,
                "step_p99_us": pct(times, 0.99) / STEPS * 1e6,
                "seq_steps_per_s": len(times) * STEPS / total,
                "concurrent_runs": CONCURRENT,
                "concurrent_total_runs": conc_runs,
                "concurrent_steps_per_s": conc_runs * STEPS / conc_elapsed,
                "concurrent_errors": errors[:3],
                "step_rows": steps,
            }
        )
    )


# ---------------------------------------------------------------------------------------
# The driver.


def ensure_dbos():
    """The venv's python with dbos==DBOS_VERSION, or None and why."""
    try:
        if not os.path.exists(VENV_PY):
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        have = subprocess.run(
            [VENV_PY, "-c", "import importlib.metadata as m; print(m.version('dbos'))"],
            capture_output=True,
            text=True,
        )
        if have.returncode != 0 or have.stdout.strip() != DBOS_VERSION:
            subprocess.run(
                [VENV_PY, "-m", "pip", "install", "-q", f"dbos=={DBOS_VERSION}"], check=True
            )
        return VENV_PY, None
    except (subprocess.CalledProcessError, OSError) as e:
        return None, f"could not install dbos=={DBOS_VERSION}: {e}"


def run_flow(args):
    cmd = ["cargo", "run", "--release", "--quiet", "--example", "durable_bench", "--"]
    cmd += ["--dir", args.dir, "--runs", str(args.runs), "--rounds", str(args.rounds)]
    print("$ " + " ".join(cmd), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    report = None
    for line in out.splitlines():
        if line.startswith('{"flow_durable_bench"'):
            report = json.loads(line)["flow_durable_bench"]
        else:
            print("  " + line)
    if report is None:
        sys.exit("durable_bench printed no JSON line")
    return report


def run_dbos(python, variant, args):
    cmd = [python, os.path.abspath(__file__), "--dbos-child", variant, "--dir", args.dir]
    cmd += ["--dbos-runs", str(args.dbos_runs), "--dbos-rounds", str(args.dbos_rounds)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        return None, f"dbos {variant} failed (exit {p.returncode}): " + " | ".join(tail)
    return json.loads(lines[-1]), None


def fmt_n(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    return f"{x:,.0f}"


def fmt_us(x):
    if x >= 1000:
        return f"{x / 1000:.2f} ms"
    if x >= 10:
        return f"{x:.0f} us"
    if x >= 1:
        return f"{x:.1f} us"
    return f"{x * 1000:.0f} ns"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.path.join(TARGET, "durable-bench"))
    ap.add_argument("--runs", type=int, default=300, help="flow: sequential durable runs")
    ap.add_argument("--rounds", type=int, default=20, help="flow: runs per concurrent task")
    ap.add_argument("--dbos-runs", type=int, default=50, help="DBOS: sequential runs")
    ap.add_argument("--dbos-rounds", type=int, default=2, help="DBOS: runs per thread")
    ap.add_argument("--skip-dbos", action="store_true")
    ap.add_argument("--dbos-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dir = os.path.abspath(args.dir)
    os.makedirs(args.dir, exist_ok=True)
    if args.dbos_child:
        return dbos_child(args)

    python, why_not = (None, "skipped (--skip-dbos)") if args.skip_dbos else ensure_dbos()
    fs_before = fsync_times(args.dir)
    flow = run_flow(args)
    dbos, dbos_errors = [], []
    if python:
        for variant in ["default", "wal-full", "wal-normal"]:
            print(f"$ dbos {DBOS_VERSION}: {variant}", flush=True)
            result, err = run_dbos(python, variant, args)
            if result:
                dbos.append(result)
            else:
                dbos_errors.append(err)
    else:
        dbos_errors.append(why_not)
    fs_after = fsync_times(args.dir)
    fs = sorted(fs_before + fs_after)
    fsync_us = pct(fs, 0.5) * 1e6

    print()
    print(
        f"fsync on {args.dir} (4 KiB pwrite + fsync, 200x before and 200x after): "
        f"Python p50 {fsync_us:.0f} us (before {pct(fs_before, 0.5) * 1e6:.0f}, after "
        f"{pct(fs_after, 0.5) * 1e6:.0f}), p99 {pct(fs, 0.99) * 1e6:.0f} us; "
        f"Rust p50 {flow['fsync_p50_us']:.0f} us (end: {flow['fsync_after_us']:.0f} us)"
    )
    print()
    rows = []
    names = {"memory": "flow, no store (Runtime::run)", "FULL": "flow, SQLite FULL (default)",
             "NORMAL": "flow, SQLite NORMAL"}
    for m in flow["modes"]:
        rows.append((names[m["mode"]], "wal" if m["mode"] != "memory" else "-", m))
    for d in dbos:
        rows.append((f"DBOS {DBOS_VERSION}, {d['mode'][5:]}", d["journal_mode"], d))
    print("| system, setting | journal | runs | step p50 | step p99 | p50 in fsyncs "
          "| steps/s, 1 run at a time | steps/s, 100 concurrent runs |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, journal, m in rows:
        print(f"| {name} | {journal} | {m['runs']} | {fmt_us(m['step_p50_us'])} | "
              f"{fmt_us(m['step_p99_us'])} | {m['step_p50_us'] / fsync_us:.2f} | "
              f"{fmt_n(m['seq_steps_per_s'])} | {fmt_n(m['concurrent_steps_per_s'])} |")
    by = {m["mode"]: m for m in flow["modes"]}
    by.update({d["mode"]: d for d in dbos})

    print()
    pairs = [("FULL", "dbos default"), ("FULL", "dbos wal-full"), ("NORMAL", "dbos wal-normal")]
    for f, d in pairs:
        if d in by:
            a, b = by[f], by[d]
            print(f"- flow {f} vs DBOS {d[5:]}: step p50 {b['step_p50_us'] / a['step_p50_us']:.1f}x "
                  f"lower; steps/s {a['seq_steps_per_s'] / b['seq_steps_per_s']:.1f}x (1 at a time), "
                  f"{a['concurrent_steps_per_s'] / b['concurrent_steps_per_s']:.1f}x (100 concurrent)")
    for d in dbos:
        if d.get("concurrent_errors"):
            print(f"- {d['mode']}: {len(d['concurrent_errors'])}+ concurrent runs failed: "
                  f"{d['concurrent_errors'][0]}")
    for e in dbos_errors:
        print(f"- DBOS not measured: {e}")

    full, normal, mem = by["FULL"], by["NORMAL"], by["memory"]
    goals = [
        ("(a) FULL: a step costs at most 1.5 fsyncs at p50",
         f"{full['step_p50_us'] / fsync_us:.2f} fsyncs ({fmt_us(full['step_p50_us'])} / {fsync_us:.0f} us)",
         full["step_p50_us"] <= 1.5 * fsync_us),
        ("(b) at least 20,000 steps/s across 100 concurrent runs (FULL)",
         f"{fmt_n(full['concurrent_steps_per_s'])} steps/s (NORMAL: {fmt_n(normal['concurrent_steps_per_s'])})",
         full["concurrent_steps_per_s"] >= 20000),
        ("(c) NORMAL: at most 10 us a step (p50)",
         fmt_us(normal["step_p50_us"]), normal["step_p50_us"] <= 10),
    ]
    print()
    print("| goal | measured | |")
    print("| --- | --- | --- |")
    for g, measured, ok in goals:
        print(f"| {g} | {measured} | **{'met' if ok else 'missed'}** |")
    print()
    print(f"No store (in memory): {fmt_us(mem['step_p50_us'])} a step at p50, "
          f"{fmt_n(mem['concurrent_steps_per_s'])} steps/s across 100 concurrent runs.")
    print(json.dumps({"bench_durable": {"fsync_p50_us": fsync_us, "flow": flow, "dbos": dbos,
                                        "dbos_version": DBOS_VERSION,
                                        "dbos_errors": dbos_errors}}))


if __name__ == "__main__":
    main()
