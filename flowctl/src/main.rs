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
    let serving = matches!(command, flowctl::Command::Serve { .. });
    let rt = if serving {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowctl: {e}");
            std::process::exit(1);
        }
    };
    let store = match rt.block_on(flowctl::open_store(&path)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowctl: {e}");
            std::process::exit(1);
        }
    };
    let result = match command {
        flowctl::Command::Serve { bind, port, token } => rt
            .block_on(flowctl::serve(store, bind, port, token))
            .map(|()| String::new()),
        command => rt.block_on(flowctl::execute(&*store, command)),
    };
    match result {
        Ok(out) => print!("{out}"),
        Err(message) => {
            eprintln!("flowctl: {message}");
            std::process::exit(1);
        }
    }
}
