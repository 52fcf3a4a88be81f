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

#[derive(Debug)]
struct Other;

async fn fetch(n: u32) -> Result<u32, Other> {
    Ok(n)
}

#[workflow]
async fn import(n: u32) -> Result<u32, E> {
    let m = fetch(n).await.unwrap_or(0);
    step(m).await
}

fn main() {}
