// Expansion snapshot input: a `flow!` using every policy: retry with several rules, step
// timeout, compensate, catch, settle, map tolerate, and the flow's own timeout.
// The test expands the pipeline below (as `flow::flow!` does, with `::flow;` first) inside
// `fn __expansion() { let _ = ..; }`; the result is `flow_every_policy.expanded.rs`.

flow! {
    name = "every_policy", timeout = "1h 30m", error = AppError;
    reserve [compensate = release]
        -> notify [
            retry(max_attempts = 5, backoff = exponential("100ms", 2.0), max_delay = "2s",
                  jitter = full, max_elapsed = "30s", on = errors),
            retry(max_attempts = 2, backoff = constant("1s"), when = AppError::is_transient),
            timeout = "5s",
            catch(fallback, on = timeouts)
        ]
        -> (audit & bill) [settle]
        -> batch
        -> map(deliver [timeout = "1s"], concurrency = 8, tolerate = 2)
}
