use flow::prelude::*;

async fn launch(n: u32) -> Result<u32, String> {
    Ok(n)
}

fn main() {
    let _ = flow! { name = "provision", durable = true; launch };
}
