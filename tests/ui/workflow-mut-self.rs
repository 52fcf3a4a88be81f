use flow::prelude::*;
use std::sync::Arc;

async fn probe(n: u32) -> Result<u32, String> {
    Ok(n)
}
struct Service;

impl Service {
    #[workflow]
    async fn check(&mut self, n: u32) -> Result<u32, String> {
        probe(n).await
    }

    #[workflow]
    async fn owned(self, n: u32) -> Result<u32, String> {
        probe(n).await
    }
}

fn main() {
    let _ = Arc::new(1);
}
