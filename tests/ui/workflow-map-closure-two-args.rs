use flow::prelude::*;

#[derive(Debug)]
struct E;
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("e")
    }
}
async fn seed_users(n: u32) -> Result<u32, E> {
    Ok(n)
}
async fn seed_orders(n: u32) -> Result<u32, E> {
    Ok(n)
}

#[workflow]
async fn seed(n: u32) -> Result<u32, E> {
    let counts = flow::map!(vec![n, n], |a, b| seed_users(a)).await?;
    Ok(counts.len() as u32)
}

fn main() {}
