use flow::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, PartialEq)]
enum E {
    Busy,
}
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

static CALLS: AtomicU32 = AtomicU32::new(0);

async fn fetch(id: u32) -> Result<String, E> {
    if CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
        return Err(E::Busy);
    }
    Ok(format!("record {id}"))
}
async fn store(record: String) -> Result<usize, E> {
    Ok(record.len())
}

#[workflow]
async fn import(id: u32) -> Result<usize, E> {
    #[retry(max_attempts = 3, backoff = exponential("100ms", 2.0))]
    let record = fetch(id).await?;
    store(record).await
}

#[tokio::test(start_paused = true)]
async fn retries_then_succeeds() {
    let t0 = tokio::time::Instant::now();
    assert_eq!(import(7).await.unwrap(), 8);
    assert_eq!(t0.elapsed(), std::time::Duration::from_millis(300));
    println!("{}", Import::GRAPH.to_mermaid());
}
