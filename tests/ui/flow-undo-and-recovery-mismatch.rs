// An undo (`compensate = undo`) or a recovery step (`catch(recover)`) that cannot take what
// it is given (the step's output, the step's failure): our error at its name, and no
// `mismatched types` at the whole macro.
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

fn build() {
    let _f = flow! { reserve [compensate = release] -> charge [catch(refund)] };
}

fn main() {}
