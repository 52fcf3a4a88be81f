//! What `flow` costs over the hand-written code, and over its Rust peers, measured side by
//! side in one run. See `BENCHMARKS.md` for the commands, the figures and what each compares.
//!
//! Every case runs on a current-thread tokio runtime, inside one `block_on` per sample, so
//! that the runtime's entry cost is not counted. Groups:
//!
//! - `chain10`: ten sequential trivial steps (`async fn(u64) -> Result<u64, E>`, adding 1):
//!   hand-written, boxed steps, `flow!`, `#[workflow]`, each with and without an observer,
//!   dagx 0.3 and sayiir 1.0 (in-process runner);
//! - `chain10_1us`: the same chain, each step doing about 1 us of real work;
//! - `fanout100`: 100 parallel branches: `join_all` / `try_join_all` against `flow!`'s
//!   `map(step)` with no limit (how `flow!` writes a dynamic fan-out);
//! - `map1000_c16`: 1,000 items, 16 at a time: `buffer_unordered(16)` / `buffered(16)`
//!   against `map(step, concurrency = 16)`;
//! - `retry`: a step failing twice, then succeeding, retried with zero delay: a hand-written
//!   loop, `flow!` and `#[workflow]` with `retry(max_attempts = 3)`, backon with a no-op
//!   sleeper, and backon's tokio sleeper (`ExponentialBuilder` with a zero minimum delay),
//!   which pays tokio's 1 ms timer tick per retry.
//!
//! The trivial steps, the chains, the observer and the retry path live in `benches/workloads/`,
//! shared with `benches/instructions.rs` (the same workloads counted in instructions).

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use flow::prelude::*;
use futures_util::StreamExt as _;
use futures_util::TryStreamExt as _;

mod workloads;
use workloads::*;

// ---------------------------------------------------------------- the steps doing ~1 us of work

/// Iterations of the hash loop that take about 1 us (calibrated at start-up).
static SPIN: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn spin(x: u64) -> u64 {
    let mut h = x;
    for _ in 0..SPIN.load(Ordering::Relaxed) {
        h = black_box(h.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5bd1_e995);
    }
    h
}

fn calibrate_spin() {
    SPIN.store(1_000, Ordering::Relaxed);
    let runs = 2_000u32;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..runs {
            black_box(spin(u64::from(i)));
        }
        best = best.min(t.elapsed());
    }
    let per_iter_ns = best.as_nanos() as f64 / f64::from(runs) / 1_000.0;
    let iters = (1_000.0 / per_iter_ns).round().max(1.0) as u64;
    SPIN.store(iters, Ordering::Relaxed);
    let t = Instant::now();
    for i in 0..runs {
        black_box(spin(u64::from(i)));
    }
    eprintln!(
        "calibrated work: {iters} hash rounds = {:.0} ns per step",
        t.elapsed().as_nanos() as f64 / f64::from(runs)
    );
}

macro_rules! working_steps {
    ($($name:ident),*) => {$(
        async fn $name(x: u64) -> Result<u64, E> {
            black_box(spin(x));
            Ok(x + 1)
        }
    )*};
}
working_steps!(w1, w2, w3, w4, w5, w6, w7, w8, w9, w10);

// ---------------------------------------------------------------- the chains

async fn hand_work(x: u64) -> Result<u64, E> {
    let x = w1(x).await?;
    let x = w2(x).await?;
    let x = w3(x).await?;
    let x = w4(x).await?;
    let x = w5(x).await?;
    let x = w6(x).await?;
    let x = w7(x).await?;
    let x = w8(x).await?;
    let x = w9(x).await?;
    w10(x).await
}

#[workflow]
async fn chain_work(x: u64) -> Result<u64, E> {
    let x = w1(x).await?;
    let x = w2(x).await?;
    let x = w3(x).await?;
    let x = w4(x).await?;
    let x = w5(x).await?;
    let x = w6(x).await?;
    let x = w7(x).await?;
    let x = w8(x).await?;
    let x = w9(x).await?;
    w10(x).await
}

mod dagx_chain {
    use dagx::{DagRunner, Task, task};

    pub struct First(pub u64);

    #[task]
    impl First {
        async fn run(&self) -> u64 {
            self.0 + 1
        }
    }

    pub struct AddOne;

    #[task]
    impl AddOne {
        async fn run(x: &u64) -> u64 {
            x + 1
        }
    }

    /// One dagx run: a DAG is built and run once (dagx DAGs are one-shot), 10 tasks.
    pub async fn run(x: u64) -> u64 {
        let dag = DagRunner::new();
        let mut last: dagx::TaskHandle<u64> = dag.add_task(First(x)).into();
        for _ in 1..10 {
            last = dag.add_task(AddOne).depends_on(last);
        }
        dag.run(|fut| {
            tokio::spawn(fut);
        })
        .await
        .expect("dagx run");
        dag.get(last).expect("dagx output")
    }
}

mod sayiir_chain {
    use std::sync::Arc;

    use sayiir_runtime::prelude::*;

    pub type Chain = Workflow<RkyvCodec, u64, ()>;

    macro_rules! then {
        ($b:expr, $($id:literal => $f:path),*) => {
            $b$(.then($id, |x: u64| async move { $f(x).await.map_err(BoxError::from) }))*
        };
    }

    /// The workflow is built once, as `flow!`'s value is; each iteration runs it.
    pub fn build() -> Chain {
        let ctx = WorkflowContext::new("chain", Arc::new(RkyvCodec), Arc::new(()));
        let b = WorkflowBuilder::new(ctx);
        then!(b, "s1" => super::s1, "s2" => super::s2, "s3" => super::s3, "s4" => super::s4,
            "s5" => super::s5, "s6" => super::s6, "s7" => super::s7, "s8" => super::s8,
            "s9" => super::s9, "s10" => super::s10)
        .build()
        .expect("sayiir workflow")
    }

    pub async fn run(w: &Chain, x: u64) -> bool {
        let status = InProcessRunner.run(w, x).await.expect("sayiir run");
        matches!(status, WorkflowStatus::Completed)
    }
}

// ---------------------------------------------------------------- the harness

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Times `iters` sequential awaits of `f()` inside one `block_on`.
fn time_async<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: Future,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            black_box(f(black_box(i)).await);
        }
        start.elapsed()
    })
}

fn chain10(c: &mut Criterion) {
    let rt = runtime();
    let plain = Runtime::new();
    let observed = Runtime::new().with_observer(observer);
    let f = flow! { s1 -> s2 -> s3 -> s4 -> s5 -> s6 -> s7 -> s8 -> s9 -> s10 };
    // One step: the run's fixed cost, to tell it apart from the cost of each step.
    let f1 = flow! { s1 };
    let boxed = boxed_steps();
    let sayiir = sayiir_chain::build();
    // The same result everywhere.
    assert_eq!(rt.block_on(hand(0)).unwrap(), 10);
    assert_eq!(rt.block_on(plain.run(&f, 0)).unwrap(), 10);
    assert_eq!(rt.block_on(plain.run(&Chain, (0,))).unwrap(), 10);
    assert_eq!(rt.block_on(run_boxed(&boxed, 0)).unwrap(), 10);
    assert_eq!(rt.block_on(dagx_chain::run(0)), 10);
    assert!(rt.block_on(sayiir_chain::run(&sayiir, 0)));

    let mut g = c.benchmark_group("chain10");
    g.bench_function("hand", |b| b.iter_custom(|n| time_async(&rt, n, hand)));
    g.bench_function("boxed", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| run_boxed(&boxed, x)))
    });
    g.bench_function("flow_macro", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| plain.run(&f, x)))
    });
    g.bench_function("flow_macro_1_step", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| plain.run(&f1, x)))
    });
    g.bench_function("workflow_attr", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| plain.run(&Chain, (x,))))
    });
    g.bench_function("workflow_attr_direct_call", |b| {
        b.iter_custom(|n| time_async(&rt, n, chain))
    });
    g.bench_function("flow_macro_observed", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| observed.run(&f, x)))
    });
    g.bench_function("workflow_attr_observed", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| observed.run(&Chain, (x,))))
    });
    g.bench_function("dagx", |b| {
        b.iter_custom(|n| time_async(&rt, n, dagx_chain::run))
    });
    g.bench_function("sayiir", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| sayiir_chain::run(&sayiir, x)))
    });
    g.finish();
}

fn chain10_1us(c: &mut Criterion) {
    calibrate_spin();
    let rt = runtime();
    let plain = Runtime::new();
    let observed = Runtime::new().with_observer(observer);
    let f = flow! { w1 -> w2 -> w3 -> w4 -> w5 -> w6 -> w7 -> w8 -> w9 -> w10 };
    assert_eq!(rt.block_on(plain.run(&f, 0)).unwrap(), 10);
    assert_eq!(rt.block_on(plain.run(&ChainWork, (0,))).unwrap(), 10);

    let mut g = c.benchmark_group("chain10_1us");
    g.bench_function("hand", |b| b.iter_custom(|n| time_async(&rt, n, hand_work)));
    g.bench_function("flow_macro", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| plain.run(&f, x)))
    });
    g.bench_function("workflow_attr", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| plain.run(&ChainWork, (x,))))
    });
    g.bench_function("flow_macro_observed", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| observed.run(&f, x)))
    });
    g.bench_function("workflow_attr_observed", |b| {
        b.iter_custom(|n| time_async(&rt, n, |x| observed.run(&ChainWork, (x,))))
    });
    g.finish();
}

fn fanout100(c: &mut Criterion) {
    use futures_util::future::{join_all, try_join_all};
    let rt = runtime();
    let plain = Runtime::new();
    let f = flow! { map(s1) };
    let input = items(100);
    let expect: Vec<u64> = (1..=100).collect();
    assert_eq!(rt.block_on(plain.run(&f, input.clone())).unwrap(), expect);

    let mut g = c.benchmark_group("fanout100");
    g.bench_function("join_all", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |_| async {
                let v = input.clone();
                join_all(v.into_iter().map(s1))
                    .await
                    .into_iter()
                    .collect::<Result<Vec<u64>, E>>()
            })
        })
    });
    g.bench_function("try_join_all", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |_| async {
                let v = input.clone();
                try_join_all(v.into_iter().map(s1)).await
            })
        })
    });
    g.bench_function("flow_map", |b| {
        b.iter_custom(|n| time_async(&rt, n, |_| plain.run(&f, input.clone())))
    });
    g.finish();
}

fn map1000(c: &mut Criterion) {
    let rt = runtime();
    let plain = Runtime::new();
    let f = flow! { map(s1, concurrency = 16) };
    let input = items(1000);
    let expect: Vec<u64> = (1..=1000).collect();
    assert_eq!(rt.block_on(plain.run(&f, input.clone())).unwrap(), expect);

    let mut g = c.benchmark_group("map1000_c16");
    g.bench_function("buffer_unordered", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |_| async {
                let v = input.clone();
                futures_util::stream::iter(v)
                    .map(s1)
                    .buffer_unordered(16)
                    .try_collect::<Vec<u64>>()
                    .await
            })
        })
    });
    g.bench_function("buffered", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |_| async {
                let v = input.clone();
                futures_util::stream::iter(v)
                    .map(s1)
                    .buffered(16)
                    .try_collect::<Vec<u64>>()
                    .await
            })
        })
    });
    g.bench_function("flow_map", |b| {
        b.iter_custom(|n| time_async(&rt, n, |_| plain.run(&f, input.clone())))
    });
    g.finish();
}

// ---------------------------------------------------------------- retry

fn retry(c: &mut Criterion) {
    use backon::{ExponentialBuilder, Retryable as _};
    let rt = runtime();
    let plain = Runtime::new();
    let f = flow! { flaky [retry(max_attempts = 3)] };
    let zero = ExponentialBuilder::default().with_min_delay(Duration::ZERO);
    arm();
    assert_eq!(rt.block_on(plain.run(&f, 0)).unwrap(), 1);
    arm();
    assert_eq!(rt.block_on(plain.run(&Retrying, (0,))).unwrap(), 1);
    arm();
    assert_eq!(rt.block_on(hand_retry(0)).unwrap(), 1);

    let mut g = c.benchmark_group("retry");
    g.bench_function("hand_loop", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |x| {
                arm();
                hand_retry(x)
            })
        })
    });
    g.bench_function("flow_macro", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |x| {
                arm();
                plain.run(&f, x)
            })
        })
    });
    g.bench_function("workflow_attr", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |x| {
                arm();
                plain.run(&Retrying, (x,))
            })
        })
    });
    g.bench_function("backon_no_sleep", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |x| {
                arm();
                (move || flaky(x))
                    .retry(zero)
                    .sleep(|_| core::future::ready(()))
            })
        })
    });
    g.finish();

    // Each retry through tokio's timer costs a 1 ms tick: few samples are enough.
    let mut g = c.benchmark_group("retry_timer");
    g.sample_size(10);
    g.bench_function("backon_tokio_sleep_zero_delay", |b| {
        b.iter_custom(|n| {
            time_async(&rt, n, |x| {
                arm();
                (move || flaky(x)).retry(zero).sleep(tokio::time::sleep)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, chain10, chain10_1us, fanout100, map1000, retry);
criterion_main!(benches);
