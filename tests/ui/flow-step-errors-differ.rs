use flow::prelude::*;

#[derive(Debug)]
struct DbError;
impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("db")
    }
}
#[derive(Debug)]
struct HttpError;
impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("http")
    }
}
async fn fetch(n: u32) -> Result<u32, DbError> {
    Ok(n)
}
async fn notify(n: u32) -> Result<u32, HttpError> {
    Ok(n)
}

fn build() {
    let _f = flow! { fetch -> notify };
}

fn main() {}
