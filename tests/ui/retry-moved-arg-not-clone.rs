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

async fn wait_healthy(nodes: Nodes) -> Result<Nodes, E> {
    Ok(nodes)
}

#[workflow]
async fn provision(n: u32) -> Result<u32, E> {
    let nodes = Nodes(vec![step(n).await?]);
    #[retry(max_attempts = 3)]
    let nodes = wait_healthy(nodes).await?;
    Ok(nodes.0.len() as u32)
}

fn main() {}
