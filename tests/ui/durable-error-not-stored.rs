use flow::prelude::*;

/// The workflow's error: not storable (no serde).
#[derive(Debug)]
struct E;
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("e")
    }
}

async fn step(n: u32) -> Result<u32, E> {
    Ok(n)
}

#[workflow(durable)]
async fn provision(n: u32) -> Result<u32, E> {
    step(n).await
}

fn main() {}
