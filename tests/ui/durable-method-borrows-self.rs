use flow::prelude::*;

struct Shop {
    price: u32,
}

async fn quote(n: u32) -> Result<u32, String> {
    Ok(n)
}

impl Shop {
    #[workflow(durable)]
    async fn order(&self, qty: u32) -> Result<u32, String> {
        quote(qty * self.price).await
    }
}

fn main() {}
