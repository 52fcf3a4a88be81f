use flow::prelude::*;

#[derive(Debug, PartialEq, Clone)]
enum E {
    Bad,
}
impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    Free,
    Pro,
}

async fn validate(n: u32) -> Result<u32, E> {
    if n == 0 { Err(E::Bad) } else { Ok(n) }
}
async fn double(n: u32) -> Result<u32, E> {
    Ok(n * 2)
}
async fn square(n: u32) -> Result<u32, E> {
    Ok(n * n)
}
async fn add(p: (u32, u32)) -> Result<Vec<u32>, E> {
    Ok(vec![p.0, p.1, p.0 + p.1])
}
async fn inc(n: u32) -> Result<u32, E> {
    Ok(n + 1)
}
async fn sum(v: Vec<u32>) -> Result<(u32, Plan), E> {
    let s: u32 = v.iter().sum();
    Ok((s, if s > 50 { Plan::Pro } else { Plan::Free }))
}
async fn welcome(x: (u32, Plan)) -> Result<String, E> {
    Ok(format!("welcome {}", x.0))
}
async fn manager(x: (u32, Plan)) -> Result<(u32, Plan), E> {
    Ok((x.0 * 10, x.1))
}

#[tokio::test]
async fn pipeline_with_every_construct() {
    let f = flow! {
        validate
            -> (double & square)
            -> add
            -> map(inc, concurrency = 2)
            -> sum
            -> branch(|x: &(u32, Plan)| x.1) { Plan::Free => welcome, Plan::Pro => manager -> welcome }
            -> welcome2 [retry(max_attempts = 2), timeout = "1s"]
    };
    async fn welcome2(s: String) -> Result<String, E> { Ok(s + "!") }
    assert_eq!(f.run(3).await.unwrap(), "welcome 33!");
    assert_eq!(f.run(6).await.unwrap(), "welcome 990!");
    let err = f.run(0).await.unwrap_err();
    assert_eq!(err.step(), Some("validate"));
    println!("{}", f.graph().to_mermaid());
}
