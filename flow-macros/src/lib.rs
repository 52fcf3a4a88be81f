//! The procedural macros of [`flow`](https://docs.rs/flow): `#[workflow]` and `flow!`.
//!
//! Use them through the `flow` crate, which re-exports them and provides the runtime their
//! expansion needs. Each entry point below is one line: the work happens on `proc_macro2`
//! types in the modules, so it can be tested (and fuzzed) outside a compiler.

mod control;
mod duration;
mod errors;
mod flow;
mod kw;
mod model;
mod policy;
mod step;
mod workflow;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod snapshots;

use proc_macro::TokenStream;

/// Turns an `async fn` into a workflow: every awaited call becomes a state of a typed state
/// machine, with the policies given as attributes on its statement. See the `flow` crate.
#[proc_macro_attribute]
pub fn workflow(args: TokenStream, item: TokenStream) -> TokenStream {
    workflow::expand(args.into(), item.into()).into()
}

/// Composes a micro-workflow inline: `flow! { validate -> (reserve & charge) -> notify }`.
///
/// Evaluates to a `flow::Flow`, which implements `flow::Workflow`; run it with `.run(input)`
/// or a `flow::Runtime`. The grammar and every construct are in the `flow` crate's docs. The
/// expansion names the runtime as `::flow`; with the dependency renamed, say where it is:
/// `flow! { crate = "::my_flow"; a -> b }`.
#[proc_macro]
pub fn flow(input: TokenStream) -> TokenStream {
    flow::expand_direct(input.into()).into()
}

/// `flow!` with the facade's path first: `flow_inner!($crate; pipeline)`. Kept for macros of
/// other crates that forward to it with their own `$crate`.
#[doc(hidden)]
#[proc_macro]
pub fn flow_inner(input: TokenStream) -> TokenStream {
    flow::expand(input.into()).into()
}
