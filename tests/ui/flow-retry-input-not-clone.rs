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
async fn wait_healthy(nodes: Nodes) -> Result<Nodes, E> {
    Ok(nodes)
}

fn build() {
    let _f = flow! { launch -> wait_healthy [retry(max_attempts = 3)] };
}

fn main() {}
