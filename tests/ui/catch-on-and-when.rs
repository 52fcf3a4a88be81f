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
async fn recover(_: flow::StepError<E>) -> Result<u32, E> {
    Ok(0)
}

#[workflow]
async fn both(n: u32) -> Result<u32, E> {
    #[catch(recover, when = |_| true, on = timeouts)]
    let m = step(n).await?;
    Ok(m)
}

fn main() {
    let _ = flow! { step [catch(recover, on = sometimes)] };
}
