use flow::prelude::*;

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

async fn many(n: u32) -> Result<Vec<u32>, E> {
    Ok(vec![n])
}

fn build() {
    let _f = flow! { many -> map(step, concurrency = 0) };
}

fn main() {}
