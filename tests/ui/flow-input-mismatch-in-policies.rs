// A step that cannot take the value on its incoming edge, wherever the edge is (a retried
// step, a step with a timeout, a parallel branch, a `map`'s body, a `branch` arm): each
// gets our one error at the step, and no `mismatched types` on the call the macro writes.
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
async fn text(s: String) -> Result<u32, E> {
    Ok(s.len() as u32)
}
async fn other(n: u32) -> Result<u32, E> {
    Ok(n)
}
async fn many(pair: (u32, u32)) -> Result<Vec<u32>, E> {
    Ok(vec![pair.0, pair.1])
}
async fn count(v: Vec<u32>) -> Result<u32, E> {
    Ok(v.len() as u32)
}

fn build() {
    let _f = flow! {
        step
            -> text [retry(max_attempts = 3)]
            -> text [timeout = "1s"]
            -> (text & other)
            -> many
            -> map(text, concurrency = 2)
            -> branch(|v: &Vec<u32>| v.is_empty()) { true => text, false => count }
    };
}

fn main() {}
