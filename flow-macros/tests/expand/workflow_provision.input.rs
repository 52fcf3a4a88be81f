// Expansion snapshot input: a `#[workflow]` with retry, timeout, compensate and a `join!`.
// The test expands the `#[workflow(..)]` function below; the result is
// `workflow_provision.expanded.rs`.

#[workflow(timeout = "10m")]
pub async fn provision(spec: Spec) -> Result<Cluster, ProvisionError> {
    #[compensate(teardown)]
    let nodes = launch(&spec).await?;
    #[retry(max_attempts = 8, backoff = exponential("200ms", 2.0), max_delay = "5s")]
    #[timeout("2s")]
    let nodes = wait_healthy(nodes).await?;
    let (users, orders) = flow::join!(seed(&nodes, "users"), seed(&nodes, "orders")).await?;
    verify(nodes, users + orders).await
}
