use flow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct E;
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("e")
    }
}

/// Not storable: no serde.
struct Node {
    id: u32,
}

async fn launch(n: u32) -> Result<Node, E> {
    Ok(Node { id: n })
}

async fn verify(node: u32) -> Result<u32, E> {
    Ok(node)
}

#[workflow(durable)]
async fn provision(n: u32) -> Result<u32, E> {
    let node = launch(n).await?;
    verify(node.id).await
}

fn main() {}
