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

#[derive(Clone, Copy)]
enum Plan {
    Free,
    Pro,
    Enterprise,
}

async fn plan(_: u32) -> Result<Plan, E> {
    Ok(Plan::Free)
}
async fn welcome(_: Plan) -> Result<u32, E> {
    Ok(1)
}

fn build() {
    let _f = flow! {
        plan -> branch(|p| *p) { Plan::Free => welcome, Plan::Pro => welcome }
    };
}

fn main() {}
