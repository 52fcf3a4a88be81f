//! Instruction counts of `flow` against the same work written by hand, under valgrind's
//! callgrind through gungraun: repeatable where wall-clock times on these shared machines are
//! not (two criterion runs of `benches/overhead.rs` on one day differed 2-3x in absolute
//! terms). See `BENCHMARKS.md` ("Instruction counts (callgrind)") for the figures.
//!
//! Run with `scripts/bench-instructions.sh` (installs valgrind and the `gungraun-runner` of the
//! same version as the `gungraun` library when missing, runs `cargo bench --bench
//! instructions`, prints instructions per step). Compiling this file needs neither tool.
//!
//! The workloads are those of `benches/overhead.rs` (shared through `benches/workloads/`).
//! Each benchmark:
//!
//! - gets a [`Fixture`] built outside the measurement (gungraun evaluates the `#[bench]`
//!   argument before callgrind starts counting): a current-thread tokio runtime, the
//!   `flow::Runtime`s, the boxed steps, the map's input; every workload has already run once
//!   on it, so one-time lazy initialisation (thread-locals, the runtime's context, the
//!   allocator's first chunks) is not counted either;
//! - runs its workload [`RUNS`] times in a row inside one `block_on`, so that the fixed cost of
//!   entering the runtime is spread over many runs the same way every time;
//! - hands the fixture back, so that dropping the runtime is not counted.
//!
//! `flow!` values are built inside the measured function (they are plain structs of a graph
//! reference and function pointers: no allocation, a few instructions once per benchmark).

// gungraun's `#[library_benchmark]` and `library_benchmark_group!` expand to public modules
// without docs; this is a benchmark binary, nothing in it is public API.
#![allow(missing_docs)]

use std::future::Future;
use std::hint::black_box;

use flow::prelude::*;
use futures_util::StreamExt as _;
use futures_util::TryStreamExt as _;
use gungraun::{library_benchmark, library_benchmark_group, main};

mod workloads;
use workloads::*;

/// Runs of the workload inside each benchmark. `scripts/bench-instructions.sh` divides by it
/// (and by the steps, branches or items of a run).
const RUNS: u64 = 100;

/// Items of the map workload, and its concurrency limit.
const MAP_ITEMS: u64 = 1_000;
/// Branches of the fan-out workload.
const FANOUT: u64 = 100;

/// Everything a benchmark needs, built before counting starts.
pub struct Fixture {
    rt: tokio::runtime::Runtime,
    plain: Runtime,
    observed: Runtime,
    boxed: Vec<BoxStep>,
    map_input: Vec<u64>,
    fanout_input: Vec<u64>,
}

macro_rules! chain_flow {
    () => {
        flow! { s1 -> s2 -> s3 -> s4 -> s5 -> s6 -> s7 -> s8 -> s9 -> s10 }
    };
}

/// Builds the fixture and runs every workload once on it (checking its result), so that the
/// measured runs start warm.
fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let fx = Fixture {
        rt,
        plain: Runtime::new(),
        observed: Runtime::new().with_observer(observer),
        boxed: boxed_steps(),
        map_input: items(MAP_ITEMS),
        fanout_input: items(FANOUT),
    };
    let f = chain_flow!();
    let f1 = flow! { s1 };
    let retry = flow! { flaky [retry(max_attempts = 3)] };
    let map = flow! { map(s1, concurrency = 16) };
    let fan = flow! { map(s1) };
    let rt = &fx.rt;
    assert_eq!(rt.block_on(hand(0)).unwrap(), 10);
    assert_eq!(rt.block_on(run_boxed(&fx.boxed, 0)).unwrap(), 10);
    assert_eq!(rt.block_on(fx.plain.run(&f, 0)).unwrap(), 10);
    assert_eq!(rt.block_on(fx.plain.run(&f1, 0)).unwrap(), 1);
    assert_eq!(rt.block_on(fx.plain.run(&Chain, (0,))).unwrap(), 10);
    assert_eq!(rt.block_on(chain(0)).unwrap(), 10);
    assert_eq!(rt.block_on(fx.observed.run(&f, 0)).unwrap(), 10);
    assert_eq!(rt.block_on(fx.observed.run(&Chain, (0,))).unwrap(), 10);
    arm();
    assert_eq!(rt.block_on(hand_retry(0)).unwrap(), 1);
    arm();
    assert_eq!(rt.block_on(fx.plain.run(&retry, 0)).unwrap(), 1);
    arm();
    assert_eq!(rt.block_on(fx.plain.run(&Retrying, (0,))).unwrap(), 1);
    let expect: Vec<u64> = (1..=MAP_ITEMS).collect();
    assert_eq!(
        rt.block_on(buffer_unordered(&fx)).unwrap().len(),
        expect.len()
    );
    assert_eq!(rt.block_on(buffered(&fx)).unwrap(), expect);
    assert_eq!(
        rt.block_on(fx.plain.run(&map, fx.map_input.clone()))
            .unwrap(),
        expect
    );
    let expect: Vec<u64> = (1..=FANOUT).collect();
    assert_eq!(rt.block_on(join_all(&fx)).unwrap(), expect);
    assert_eq!(
        rt.block_on(fx.plain.run(&fan, fx.fanout_input.clone()))
            .unwrap(),
        expect
    );
    fx
}

/// Awaits `f(i)` for `i` in `0..RUNS`, one after the other, inside one `block_on`.
#[inline(never)]
fn repeat<F, Fut>(fx: &Fixture, mut f: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future,
{
    fx.rt.block_on(async {
        for i in 0..RUNS {
            black_box(f(black_box(i)).await);
        }
    });
}

async fn buffer_unordered(fx: &Fixture) -> Result<Vec<u64>, E> {
    futures_util::stream::iter(fx.map_input.clone())
        .map(s1)
        .buffer_unordered(16)
        .try_collect::<Vec<u64>>()
        .await
}

async fn buffered(fx: &Fixture) -> Result<Vec<u64>, E> {
    futures_util::stream::iter(fx.map_input.clone())
        .map(s1)
        .buffered(16)
        .try_collect::<Vec<u64>>()
        .await
}

async fn join_all(fx: &Fixture) -> Result<Vec<u64>, E> {
    futures_util::future::join_all(fx.fanout_input.clone().into_iter().map(s1))
        .await
        .into_iter()
        .collect::<Result<Vec<u64>, E>>()
}

// ---------------------------------------------------------------- chain10: ten trivial steps

#[library_benchmark]
#[bench::runs(fixture())]
fn hand_chain(fx: Fixture) -> Fixture {
    repeat(&fx, hand);
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn boxed_chain(fx: Fixture) -> Fixture {
    repeat(&fx, |x| run_boxed(&fx.boxed, x));
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn flow_macro(fx: Fixture) -> Fixture {
    let f = chain_flow!();
    repeat(&fx, |x| fx.plain.run(&f, x));
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn workflow_attr(fx: Fixture) -> Fixture {
    repeat(&fx, |x| fx.plain.run(&Chain, (x,)));
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn workflow_attr_direct_call(fx: Fixture) -> Fixture {
    repeat(&fx, chain);
    fx
}

library_benchmark_group!(
    name = chain10;
    benchmarks = hand_chain, boxed_chain, flow_macro, workflow_attr, workflow_attr_direct_call
);

// ---------------------------------------------------------------- one step: a run's fixed cost

#[library_benchmark]
#[bench::runs(fixture())]
fn hand_1_step(fx: Fixture) -> Fixture {
    repeat(&fx, s1);
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn flow_macro_1_step(fx: Fixture) -> Fixture {
    let f = flow! { s1 };
    repeat(&fx, |x| fx.plain.run(&f, x));
    fx
}

library_benchmark_group!(
    name = step1;
    benchmarks = hand_1_step, flow_macro_1_step
);

// ---------------------------------------------------------------- chain10 with an observer

#[library_benchmark]
#[bench::runs(fixture())]
fn flow_macro_observed(fx: Fixture) -> Fixture {
    let f = chain_flow!();
    repeat(&fx, |x| fx.observed.run(&f, x));
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn workflow_attr_observed(fx: Fixture) -> Fixture {
    repeat(&fx, |x| fx.observed.run(&Chain, (x,)));
    fx
}

library_benchmark_group!(
    name = chain10_observed;
    benchmarks = flow_macro_observed, workflow_attr_observed
);

// ---------------------------------------------------------------- retry: two zero-delay failures

#[library_benchmark]
#[bench::runs(fixture())]
fn hand_loop(fx: Fixture) -> Fixture {
    repeat(&fx, |x| {
        arm();
        hand_retry(x)
    });
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn flow_macro_retry(fx: Fixture) -> Fixture {
    let f = flow! { flaky [retry(max_attempts = 3)] };
    repeat(&fx, |x| {
        arm();
        fx.plain.run(&f, x)
    });
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn workflow_attr_retry(fx: Fixture) -> Fixture {
    repeat(&fx, |x| {
        arm();
        fx.plain.run(&Retrying, (x,))
    });
    fx
}

library_benchmark_group!(
    name = retry;
    benchmarks = hand_loop, flow_macro_retry, workflow_attr_retry
);

// ---------------------------------------------------------------- map: 1,000 items, 16 at a time

#[library_benchmark]
#[bench::runs(fixture())]
fn buffer_unordered_16(fx: Fixture) -> Fixture {
    repeat(&fx, |_| buffer_unordered(&fx));
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn buffered_16(fx: Fixture) -> Fixture {
    repeat(&fx, |_| buffered(&fx));
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn flow_map_16(fx: Fixture) -> Fixture {
    let f = flow! { map(s1, concurrency = 16) };
    repeat(&fx, |_| fx.plain.run(&f, fx.map_input.clone()));
    fx
}

library_benchmark_group!(
    name = map1000_c16;
    benchmarks = buffer_unordered_16, buffered_16, flow_map_16
);

// ---------------------------------------------------------------- fan-out: 100 branches

#[library_benchmark]
#[bench::runs(fixture())]
fn join_all_100(fx: Fixture) -> Fixture {
    repeat(&fx, |_| join_all(&fx));
    fx
}

#[library_benchmark]
#[bench::runs(fixture())]
fn flow_map_100(fx: Fixture) -> Fixture {
    let f = flow! { map(s1) };
    repeat(&fx, |_| fx.plain.run(&f, fx.fanout_input.clone()));
    fx
}

library_benchmark_group!(
    name = fanout100;
    benchmarks = join_all_100, flow_map_100
);

main!(
    library_benchmark_groups = chain10,
    step1,
    chain10_observed,
    retry,
    map1000_c16,
    fanout100
);
