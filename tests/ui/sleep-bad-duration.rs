use flow::workflow;

async fn step(n: u32) -> Result<u32, String> {
    Ok(n)
}

#[workflow]
async fn soak(n: u32) -> Result<u32, String> {
    let v = step(n).await?;
    flow::sleep("a while").await;
    #[retry(max_attempts = 3)]
    flow::sleep("10m").await;
    Ok(v)
}

fn main() {}
