// One step, `wait_healthy`, named by four macros of one file: two `#[workflow]`s and two
// `flow!`s, one of each retrying it with an input that is not `Clone`.
//
// `#[workflow]` names its steps with type parameters of the body's function, which rustc
// prints by their names whatever else the crate defines: "step `wait_healthy`".
//
// KNOWN LIMITATION, recorded here so that a fix shows up as a diff: a `flow!` names its steps
// through marker structs of its own (a `flow!` is an expression whose steps run in a
// closure, which cannot be generic), and rustc prints a type by its bare name only when no
// other item of the crate has that name. With two `flow!`s naming `wait_healthy`, it prints
// the path of the marker: "step `retried::__flow_steps::wait_healthy`". With the step in one
// `flow!` only, the message reads "step `wait_healthy`" (flow-retry-input-not-clone).
use flow::prelude::*;

#[derive(Debug)]
struct E;
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("e")
    }
}

struct Nodes(Vec<u32>);

async fn launch(n: u32) -> Result<Nodes, E> {
    Ok(Nodes(vec![n]))
}
async fn wait_healthy(nodes: Nodes) -> Result<Nodes, E> {
    Ok(nodes)
}

#[workflow]
async fn remediate(n: u32) -> Result<u32, E> {
    let nodes = launch(n).await?;
    let nodes = wait_healthy(nodes).await?;
    Ok(nodes.0.len() as u32)
}

fn plain() {
    let _f = flow! { launch -> wait_healthy };
}

fn retried() {
    let _f = flow! { launch -> wait_healthy [retry(max_attempts = 3)] };
}

#[workflow]
async fn provision(n: u32) -> Result<u32, E> {
    let nodes = launch(n).await?;
    #[retry(max_attempts = 3)]
    let nodes = wait_healthy(nodes).await?;
    Ok(nodes.0.len() as u32)
}

fn main() {}
