use flow::prelude::*;

async fn probe(n: u32) -> Result<u32, String> {
    Ok(n)
}

#[workflow]
async fn twice(n: u32) -> Result<u32, String> {
    #[label(check)]
    probe(n).await?;
    #[label(check)]
    probe(n).await
}

#[workflow]
async fn shadow(n: u32) -> Result<u32, String> {
    #[label(probe)]
    probe(n).await?;
    probe(n).await
}

fn main() {}
