use flow::prelude::*;

#[workflow]
async fn count(n: u32) -> u32 {
    n + 1
}

fn main() {}
