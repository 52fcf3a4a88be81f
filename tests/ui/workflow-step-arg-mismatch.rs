// An argument of the wrong type in a step call reads as rustc reports it without the macro:
// once, at the argument, with a suggestion that is valid in the source; also when the step
// is retried (its arguments are copied for each attempt).
use flow::prelude::*;

#[derive(Debug)]
struct E;
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("e")
    }
}
async fn text(s: String) -> Result<u32, E> {
    Ok(s.len() as u32)
}

#[workflow]
async fn plain(n: u32) -> Result<u32, E> {
    let m = text(n).await?;
    Ok(m)
}

#[workflow]
async fn retried(n: u32) -> Result<u32, E> {
    #[retry(max_attempts = 3)]
    let m = text(n).await?;
    Ok(m)
}

fn main() {}
