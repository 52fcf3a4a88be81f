//! `flowctl`: manage the durable runs of `flow` in a store (see the library's documentation
//! and `flowctl --help`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, command) = match flowctl::parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if !std::path::Path::new(&path).exists() {
        eprintln!("flowctl: no store at {path}");
        std::process::exit(1);
    }
    let store = match flow_store_sqlite::SqliteStore::open(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowctl: cannot open the store {path}: {e}");
            std::process::exit(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowctl: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(flowctl::execute(&store, command)) {
        Ok(out) => print!("{out}"),
        Err(message) => {
            eprintln!("flowctl: {message}");
            std::process::exit(1);
        }
    }
}
