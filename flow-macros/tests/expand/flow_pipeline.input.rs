// Expansion snapshot input: a `flow!` with a parallel group, a `map` and a `branch`.
// The test expands the pipeline below (as `flow::flow!` does, with `::flow;` first) inside
// `fn __expansion() { let _ = ..; }`; the result is `flow_pipeline.expanded.rs`.

flow! {
    parse
        -> (enrich & score)
        -> map(charge, concurrency = 4)
        -> branch(|r: &Receipts| r.kind) {
            Kind::Small => archive,
            Kind::Large => review -> archive,
        }
}
