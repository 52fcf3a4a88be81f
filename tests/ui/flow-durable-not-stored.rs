use flow::prelude::*;

/// Not storable: no serde.
struct Node {
    id: u32,
}

/// Not storable either.
struct Spec {
    nodes: u32,
}

async fn plan(spec: Spec) -> Result<u32, String> {
    Ok(spec.nodes)
}

async fn launch(n: u32) -> Result<Node, String> {
    Ok(Node { id: n })
}

async fn verify(node: Node) -> Result<u32, String> {
    Ok(node.id)
}

fn main() {
    // The step's output, at the step; the flow's input, at `durable`.
    let _ = flow! { name = "provision", durable; plan -> launch -> verify };
}
