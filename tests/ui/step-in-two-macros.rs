// One step, `wait_healthy`, named by four macros of one file, two of them retrying it with an
// input that is not `Clone`.
//
// KNOWN LIMITATION, recorded here so that a fix shows up as a diff: the messages name the step
// through a marker type each macro defines (`__flow_steps::wait_healthy`,
// `__flow_steps_provision::wait_healthy`), and rustc prints a type by its bare name only when
// no other item of the crate has that name. With four markers named `wait_healthy`, it prints
// their paths: "step `retried::__flow_steps::wait_healthy`", "step
// `__flow_steps_provision::wait_healthy`". With the step in one macro only, the message reads
// "step `wait_healthy`" (flow-retry-input-not-clone, retry-moved-arg-not-clone).
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
