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

struct Nodes(Vec<u32>);

async fn launch(n: u32) -> Result<Nodes, E> {
    Ok(Nodes(vec![n]))
}
async fn seed_users(nodes: Nodes) -> Result<u32, E> {
    Ok(nodes.0.len() as u32)
}
async fn seed_orders(nodes: Nodes) -> Result<u32, E> {
    Ok(nodes.0.len() as u32)
}

fn build() {
    let _f = flow! { launch -> (seed_users & seed_orders) };
}

fn main() {}
