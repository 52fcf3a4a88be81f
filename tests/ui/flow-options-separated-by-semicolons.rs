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

fn build() {
    let _f = flow! { name = "x"; error = E; step };
}

fn main() {}
