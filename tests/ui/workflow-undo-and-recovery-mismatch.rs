// An undo (`#[compensate(undo)]`) or a recovery step (`#[catch(recover)]`) that cannot take
// what it is given (the step's output, the step's failure): our error at its name.
use flow::prelude::*;

#[derive(Debug)]
struct E;
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("e")
    }
}
async fn reserve(n: u32) -> Result<u32, E> {
    Ok(n)
}
async fn charge(n: u32) -> Result<u32, E> {
    Ok(n)
}
async fn refund(n: u32) -> Result<u32, E> {
    Ok(n)
}
async fn release(id: String) -> Result<(), E> {
    drop(id);
    Ok(())
}

#[workflow]
async fn order(n: u32) -> Result<u32, E> {
    #[compensate(release)]
    let id = reserve(n).await?;
    #[catch(refund)]
    let paid = charge(id).await?;
    Ok(paid)
}

fn main() {}
