use flow::prelude::*;

#[derive(Debug)]
struct Opaque;

async fn step(n: u32) -> Result<u32, Opaque> {
    Ok(n)
}

#[workflow]
async fn quiet(n: u32) -> Result<u32, Opaque> {
    step(n).await
}

fn main() {}
