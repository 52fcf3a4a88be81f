//! `#[workflow]`: an `async fn` whose awaited calls become the states of a state machine.
//!
//! Input:
//!
//! ```text
//! #[workflow(timeout = "10m")]
//! pub async fn provision(spec: Spec) -> Result<Cluster, Error> {
//!     let nodes = launch(&spec).await?;
//!     #[retry(max_attempts = 8, backoff = exponential("200ms", 2.0))]
//!     let nodes = wait_healthy(nodes).await?;
//!     verify(nodes).await
//! }
//! ```
//!
//! Output (abridged):
//!
//! ```text
//! pub async fn provision(spec: Spec) -> Result<Cluster, flow::Error<Error>> {
//!     flow::__private::run_nested(&Provision, (spec,)).await
//! }
//! pub struct Provision;
//! pub enum ProvisionState { Start, Launch, WaitHealthy, Verify, Completed, Failed, Cancelled }
//! impl flow::Workflow for Provision {
//!     type Input = (Spec,); type Output = Cluster; type Error = Error; type State = ProvisionState;
//!     fn execute(&self, ctx, input) -> impl Future {
//!         async fn body(__ctx: Ctx<Error>, spec: Spec) -> Result<Cluster, Error> {
//!             let nodes = match { .. __ctx.step(NodeId(2), launch(&spec)).await .. } {
//!                 Ok(v) => __ctx.surface_ok(v, ..), Err(e) => __ctx.surface_as(Err(e), ..).await,
//!             }?;
//!             ...
//!         }
//!         async move { ctx.finish(body(ctx.clone(), input.0).await) }
//!     }
//! }
//! ```
//!
//! Every awaited call in the body itself (not inside closures, async blocks or nested items)
//! is a step; `flow::join!(a(..), b(..))` / `flow::settle!(..)` awaited in the body is a
//! parallel group whose calls are steps. To await something that is not a step, bind the
//! future to a variable first.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Expr, FnArg, Ident, ItemFn, Pat, ReturnType, Stmt, Token, Type};

use crate::control::{LoopFrame, Pending, block_has_step, dedup, expr_has_step, text};
use crate::errors::{Errors, closest, unknown_key};
use crate::model::{EdgeKind, Kind, Model};
use crate::policy::{Item, ItemArgs, KeyValue, Policy};
use crate::step::{Call, Gen, Markers};
use crate::{duration, kw};

struct Options {
    /// `durable`: where it was written.
    durable: Option<Span>,
    timeout: Option<core::time::Duration>,
    name: Option<Ident>,
    krate: TokenStream,
    /// `compensation_timeout = "10m"` and `compensate_on_drop = false`.
    undo: UndoOptions,
}

/// The saga options shared by `#[workflow(..)]` and `flow!`'s header.
#[derive(Default)]
pub(crate) struct UndoOptions {
    pub(crate) budget: Option<core::time::Duration>,
    pub(crate) on_drop: Option<bool>,
}

impl UndoOptions {
    /// Parses `key = value` when `key` is one of the saga options; `false` otherwise.
    pub(crate) fn parse(&mut self, key: &Ident, value: &Expr, errors: &mut Errors) -> bool {
        match key.to_string().as_str() {
            kw::COMPENSATION_TIMEOUT => {
                self.budget = errors.ok(duration::parse(value, "the compensation timeout"));
                true
            }
            kw::COMPENSATE_ON_DROP => {
                match value {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Bool(b),
                        ..
                    }) => self.on_drop = Some(b.value),
                    _ => errors.spanned(value, "`compensate_on_drop` is `true` or `false`"),
                }
                true
            }
            _ => false,
        }
    }

    /// The `Workflow` methods that override the defaults.
    pub(crate) fn trait_methods(&self) -> TokenStream {
        let mut out = TokenStream::new();
        if let Some(d) = self.budget {
            let d = duration::to_tokens(d);
            out.extend(quote! {
                fn compensation_timeout(&self) -> ::core::time::Duration {
                    #d
                }
            });
        }
        if let Some(b) = self.on_drop {
            out.extend(quote! {
                fn compensate_on_drop(&self) -> bool {
                    #b
                }
            });
        }
        out
    }

    /// Builder calls on a `Flow` or a method's workflow value.
    pub(crate) fn builder_calls(&self) -> TokenStream {
        let mut out = TokenStream::new();
        if let Some(d) = self.budget {
            let d = duration::to_tokens(d);
            out.extend(quote!(.with_compensation_timeout(#d)));
        }
        if let Some(b) = self.on_drop {
            out.extend(quote!(.with_compensate_on_drop(#b)));
        }
        out
    }
}

fn parse_options(args: TokenStream, errors: &mut Errors) -> Options {
    let mut o = Options {
        durable: None,
        timeout: None,
        name: None,
        krate: quote!(::flow),
        undo: UndoOptions::default(),
    };
    let Some(pairs) = errors.ok(Punctuated::<Opt, Token![,]>::parse_terminated.parse2(args)) else {
        return o;
    };
    for opt in pairs {
        let kv = match opt {
            Opt::Flag(flag) if flag == kw::DURABLE => {
                if cfg!(feature = "durable") {
                    o.durable = Some(flag.span());
                } else {
                    errors.spanned(
                        &flag,
                        "durable workflows need the `durable` feature of `flow`: `flow = { version = \"..\", features = [\"durable\"] }`",
                    );
                }
                continue;
            }
            Opt::Flag(flag) => {
                let mut msg = unknown_key(
                    "`#[workflow]` option",
                    &flag.to_string(),
                    kw::WORKFLOW_OPTIONS,
                );
                if kw::WORKFLOW_OPTIONS.contains(&flag.to_string().as_str()) {
                    msg = format!("`{flag}` needs a value: `{flag} = ..`");
                }
                errors.spanned(&flag, msg);
                continue;
            }
            Opt::Pair(kv) => kv,
        };
        if o.undo.parse(&kv.key, &kv.value, errors) {
            continue;
        }
        match kv.key.to_string().as_str() {
            kw::TIMEOUT => {
                o.timeout = errors.ok(duration::parse(&kv.value, "the workflow timeout"))
            }
            kw::NAME => match lit_str(&kv.value) {
                Some(s) => match syn::parse_str::<Ident>(&s.value()) {
                    Ok(mut i) => {
                        i.set_span(s.span());
                        o.name = Some(i);
                    }
                    Err(_) => errors.spanned(
                        &kv.value,
                        "`name` must be a type name such as \"Provision\"",
                    ),
                },
                None => {
                    errors.spanned(&kv.value, "`name` must be a string: `name = \"Provision\"`")
                }
            },
            kw::CRATE => match lit_str(&kv.value) {
                Some(s) => match s.parse::<syn::Path>() {
                    Ok(p) => o.krate = p.into_token_stream(),
                    Err(_) => {
                        errors.spanned(&kv.value, "`crate` must be a path such as \"::my_flow\"")
                    }
                },
                None => errors.spanned(
                    &kv.value,
                    "`crate` must be a string: `crate = \"::my_flow\"`",
                ),
            },
            other => {
                let mut msg = unknown_key("`#[workflow]` option", other, kw::WORKFLOW_OPTIONS);
                const STEP_WORDS: &[&str] = &[
                    "retr", "attempt", "backoff", "jitter", "delay", "compens", "catch",
                ];
                if STEP_WORDS.iter().any(|w| other.contains(w)) {
                    msg.push_str("; retries, timeouts, compensation and catch go on a step's statement, e.g. `#[retry(max_attempts = 3)] let x = step().await?;`");
                }
                errors.spanned(&kv.key, msg);
            }
        }
    }
    o
}

/// One `#[workflow(..)]` option: `key = value`, or a flag (`durable`).
enum Opt {
    Pair(KeyValue),
    Flag(Ident),
}

impl syn::parse::Parse for Opt {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        if input.peek(Ident) && !input.peek2(Token![=]) {
            let flag: Ident = input.parse()?;
            return Ok(Opt::Flag(flag));
        }
        input.parse().map(Opt::Pair)
    }
}

fn rw_errors_durable_method(at: Span, errors: &mut Errors) {
    errors.push(syn::Error::new(
        at,
        "`durable` on a `&self` method: a durable workflow is kept (registered) to resume its runs after a restart, so it must own its receiver: take `self: Arc<Self>` (or make it an associated function without `self`)",
    ));
}

fn lit_str(e: &Expr) -> Option<&syn::LitStr> {
    match e {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s),
        _ => None,
    }
}

/// Entry point: never panics; on errors returns the user's function unchanged plus the errors,
/// so that the rest of the crate still type-checks (no cascade) and IDEs keep working.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let options = parse_options(args, &mut errors);
    let func = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let mut err = syn::Error::new(
                Span::call_site(),
                "`#[workflow]` goes on an `async fn` that returns a `Result`",
            );
            err.combine(e);
            let err = err.to_compile_error();
            return quote!(#err #item);
        }
    };
    match expand_fn(func.clone(), options, &mut errors) {
        Some(out) if errors.is_empty() => out,
        _ => {
            let errs = errors.into_compile_errors();
            let fallback = strip_policy_attrs(func);
            quote!(#errs #fallback)
        }
    }
}

/// The user's function with our step attributes removed, emitted beside errors so that the
/// only errors the user sees are ours.
fn strip_policy_attrs(mut f: ItemFn) -> ItemFn {
    struct Strip;
    impl VisitMut for Strip {
        fn visit_stmt_mut(&mut self, s: &mut Stmt) {
            if let Some(attrs) = stmt_attrs(s) {
                attrs.retain(|a| !is_policy_like_attr(a));
            }
            syn::visit_mut::visit_stmt_mut(self, s);
        }
        fn visit_expr_macro_mut(&mut self, _: &mut syn::ExprMacro) {}
    }
    Strip.visit_block_mut(&mut f.block);
    f
}

fn is_policy_attr(a: &Attribute) -> bool {
    a.path().get_ident().is_some_and(|i| {
        let i = i.to_string();
        kw::STEP_POLICIES.contains(&i.as_str()) || i == kw::LABEL
    })
}

/// A policy attribute or a near miss (`#[retyr]`), which is reported as ours.
fn is_policy_like_attr(a: &Attribute) -> bool {
    a.path().get_ident().is_some_and(|i| {
        let i = i.to_string();
        i == kw::LABEL || closest(&i, kw::STEP_POLICIES).is_some()
    })
}

fn stmt_attrs(s: &mut Stmt) -> Option<&mut Vec<Attribute>> {
    match s {
        Stmt::Local(l) => Some(&mut l.attrs),
        Stmt::Expr(e, _) => expr_attrs(e),
        Stmt::Macro(m) => Some(&mut m.attrs),
        Stmt::Item(_) => None,
    }
}

fn expr_attrs(e: &mut Expr) -> Option<&mut Vec<Attribute>> {
    match e {
        Expr::Try(t) => Some(&mut t.attrs),
        Expr::Await(a) => Some(&mut a.attrs),
        Expr::Call(c) => Some(&mut c.attrs),
        Expr::MethodCall(m) => Some(&mut m.attrs),
        Expr::Macro(m) => Some(&mut m.attrs),
        Expr::Assign(a) => Some(&mut a.attrs),
        Expr::Match(m) => Some(&mut m.attrs),
        Expr::If(i) => Some(&mut i.attrs),
        Expr::Block(b) => Some(&mut b.attrs),
        Expr::Path(p) => Some(&mut p.attrs),
        _ => None,
    }
}

struct Signature {
    /// Parameter patterns and types.
    params: Vec<(Pat, Type)>,
    ok: TokenStream,
    err: TokenStream,
    ret: Type,
    receiver: Receiver,
    /// An associated function of an `impl` (a method, or a function that names `Self`):
    /// expanded into associated items only.
    associated: bool,
}

fn check_signature(f: &ItemFn, errors: &mut Errors) -> Option<Signature> {
    let sig = &f.sig;
    let mut ok = true;
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "`#[workflow]` needs an `async fn`: the workflow's steps are awaited calls",
        );
        ok = false;
    }
    for g in &sig.generics.params {
        if let syn::GenericParam::Lifetime(l) = g {
            errors.spanned(l, "a `#[workflow]` function cannot have lifetime parameters: its parameters must be owned, since a run may outlive the caller's borrows");
            ok = false;
        }
    }
    if let Some(c) = &sig.constness {
        errors.spanned(c, "a `#[workflow]` function cannot be `const`");
        ok = false;
    }
    if let Some(v) = &sig.variadic {
        errors.spanned(v, "a `#[workflow]` function cannot be variadic");
        ok = false;
    }
    let mut params = Vec::new();
    let mut receiver = Receiver::None;
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                receiver = match &r.kind {
                    syn::ReceiverKind::Reference(_, _, None) => Receiver::Ref,
                    syn::ReceiverKind::Typed(_, ty)
                        if r.mutability.is_none() && is_arc_self(ty) =>
                    {
                        Receiver::Arc
                    }
                    _ => {
                        errors.spanned(r, "a `#[workflow]` method takes `&self` (the workflow borrows the service) or `self: Arc<Self>` (the workflow owns a handle to it, and can be spawned); runs share the receiver, so not `&mut self` or `self`");
                        ok = false;
                        Receiver::None
                    }
                };
            }
            FnArg::Typed(pt) => {
                if let Some(bad) = borrowed_or_impl(&pt.ty) {
                    errors.spanned(bad, "a workflow's parameters must be owned types (no references or `impl Trait`): a run may outlive the caller's borrows");
                    ok = false;
                }
                params.push(((*pt.pat).clone(), (*pt.ty).clone()));
            }
        }
    }
    let ret = match &sig.output {
        ReturnType::Default => {
            errors.spanned(
                &sig.ident,
                "a `#[workflow]` function must return a `Result<T, E>`: add `-> Result<T, E>`",
            );
            return None;
        }
        ReturnType::Type(_, t) => (**t).clone(),
    };
    if let Some(what) = certainly_not_result(&ret) {
        errors.spanned(
            &ret,
            format!("a `#[workflow]` function must return a `Result<T, E>`, but this returns {what}: a workflow can fail, and its steps' errors convert into `E`"),
        );
        return None;
    }
    if !ok {
        return None;
    }
    let (okt, errt) = split_result(&ret);
    Some(Signature {
        params,
        ok: okt,
        err: errt,
        ret,
        receiver,
        associated: receiver != Receiver::None || mentions_self(f),
    })
}

/// How a `#[workflow]` method holds its service.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// A free function (or an associated function without `self`).
    None,
    /// `&self`: the workflow borrows the service.
    Ref,
    /// `self: Arc<Self>`: the workflow owns a handle to the service (so it can be spawned).
    Arc,
}

/// `Arc<Self>` (any path ending in `Arc`).
fn is_arc_self(ty: &Type) -> bool {
    if let Type::Path(tp) = ty
        && let Some(last) = tp.path.segments.last()
        && last.ident == "Arc"
        && let syn::PathArguments::AngleBracketed(a) = &last.arguments
        && let Some(syn::GenericArgument::Type(Type::Path(inner))) = a.args.first()
    {
        return inner.path.is_ident("Self");
    }
    false
}

/// Whether `Self` appears in the function: it is then an associated function of an `impl`.
fn mentions_self(f: &ItemFn) -> bool {
    fn walk(ts: TokenStream) -> bool {
        ts.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) => i == "Self",
            proc_macro2::TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(f.sig.to_token_stream()) || walk(f.block.to_token_stream())
}

/// A description of the return type when it is certainly not a `Result` (an alias such as
/// `MyResult<T>` cannot be told apart here; the type checker reports those through
/// `IsResult`).
fn certainly_not_result(ty: &Type) -> Option<String> {
    const NOT_RESULTS: &[&str] = &[
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "f32", "f64", "bool", "char", "str", "String", "Vec", "Option", "Box", "HashMap",
    ];
    match ty {
        Type::Path(tp) => {
            let last = tp.path.segments.last()?;
            let name = last.ident.to_string();
            NOT_RESULTS
                .contains(&name.as_str())
                .then(|| format!("`{}`", ty.to_token_stream().to_string().replace(' ', "")))
        }
        Type::Tuple(t) if t.elems.is_empty() => Some("`()`".to_owned()),
        Type::Paren(p) => certainly_not_result(&p.elem),
        Type::Group(g) => certainly_not_result(&g.elem),
        Type::Macro(_) | Type::Verbatim(_) => None,
        other => Some(format!("`{}`", other.to_token_stream())),
    }
}

/// `Result<A, B>` -> (`A`, `B`); any other type -> projections through `IsResult` (filled in
/// by the caller, which knows the crate path), signalled by empty streams.
fn split_result(ty: &Type) -> (TokenStream, TokenStream) {
    if let Type::Path(tp) = ty
        && tp.qself.is_none()
        && let Some(last) = tp.path.segments.last()
        && last.ident == "Result"
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && args.args.len() == 2
        && let (Some(syn::GenericArgument::Type(a)), Some(syn::GenericArgument::Type(b))) =
            (args.args.first(), args.args.last())
    {
        return (a.to_token_stream(), b.to_token_stream());
    }
    (TokenStream::new(), TokenStream::new())
}

fn borrowed_or_impl(ty: &Type) -> Option<&Type> {
    struct Find<'a> {
        found: Option<&'a Type>,
    }
    impl<'a> syn::visit::Visit<'a> for Find<'a> {
        fn visit_type(&mut self, t: &'a Type) {
            if self.found.is_some() {
                return;
            }
            match t {
                Type::Reference(_) | Type::ImplTrait(_) => self.found = Some(t),
                _ => syn::visit::visit_type(self, t),
            }
        }
    }
    let mut f = Find { found: None };
    syn::visit::Visit::visit_type(&mut f, ty);
    f.found
}

/// Walks the body: numbers the steps in source order, records them in the model, and
/// rewrites each into a call through the run context.
struct Rewriter<'a> {
    model: Model,
    errors: &'a mut Errors,
    krate: TokenStream,
    ctx: Ident,
    /// The edges the next node receives: from the nodes it follows, with the label of the
    /// branch arm or loop exit they come through.
    frontier: Vec<Pending>,
    /// The groups (branch, loop, parallel, map) around the current position, innermost last.
    parents: Vec<u32>,
    /// The same, as text (`if healthy`, `for node in nodes`): each node's place in the control
    /// flow, hashed into its fingerprint.
    scope: Vec<String>,
    /// The loops around the current position, for `break` and `continue`.
    loops: Vec<LoopFrame>,
    /// The `#[label(..)]` of the step (or group) about to be added.
    next_label: Option<String>,
    /// Every label given, for the uniqueness check.
    labels: Vec<Ident>,
    /// The workflow's error type.
    error_ty: TokenStream,
    markers: Markers,
    /// `#[workflow(durable)]`.
    durable: bool,
}

enum StepExpr<'a> {
    Call(Call<'a>),
    Group {
        settle: bool,
        branches: Vec<(Vec<Attribute>, Expr)>,
        span: Span,
    },
    Map(Box<MapExpr>),
    /// A `flow::map!` whose arguments do not parse.
    Bad(syn::Error),
    /// `flow::signal("approve")` or `flow::signal("approve").timeout("1h")`: a wait for a
    /// message from outside.
    Signal {
        name: syn::LitStr,
        timeout: Option<SignalTimeout>,
        /// `flow::signal::<T>(..)`: the message type, when written.
        ty: Option<TokenStream>,
        span: Span,
    },
    /// `flow::sleep("10m")`: a timer, a node of the graph (durable in a durable workflow).
    Sleep {
        duration: SignalTimeout,
        span: Span,
    },
}

/// A signal's timeout: a duration string parsed at compile time, or a `Duration` expression.
enum SignalTimeout {
    Fixed(core::time::Duration),
    Expr(TokenStream),
}

/// `flow::signal(NAME)` (a call of the path `flow::signal`, with an optional turbofish).
fn signal_call(e: &Expr) -> Option<(&syn::ExprCall, Option<TokenStream>)> {
    let Expr::Call(c) = e else { return None };
    let Expr::Path(p) = &*c.func else { return None };
    let segs: Vec<&syn::PathSegment> = p.path.segments.iter().collect();
    match segs.as_slice() {
        [krate, f] if krate.ident == "flow" && f.ident == "signal" => {
            let ty = match &f.arguments {
                syn::PathArguments::AngleBracketed(a) => {
                    a.args.first().map(ToTokens::to_token_stream)
                }
                _ => None,
            };
            Some((c, ty))
        }
        _ => None,
    }
}

/// `flow::sleep("10m")` or `flow::sleep(duration)`, parsed; `Err` for a malformed one.
fn classify_sleep(base: &Expr) -> Option<Result<StepExpr<'static>, syn::Error>> {
    let Expr::Call(c) = base else { return None };
    let Expr::Path(p) = &*c.func else { return None };
    let segs: Vec<&syn::PathSegment> = p.path.segments.iter().collect();
    match segs.as_slice() {
        [krate, f] if krate.ident == "flow" && f.ident == "sleep" => {}
        _ => return None,
    }
    let (Some(arg), 1) = (c.args.first(), c.args.len()) else {
        return Some(Err(syn::Error::new(
            c.paren_token.span.join(),
            "`flow::sleep` takes one duration: `flow::sleep(\"10m\")` or a `Duration`",
        )));
    };
    let duration = match arg {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(_),
            ..
        }) => match duration::parse(arg, "a sleep") {
            Ok(d) => SignalTimeout::Fixed(d),
            Err(e) => return Some(Err(e)),
        },
        other => SignalTimeout::Expr(other.to_token_stream()),
    };
    Some(Ok(StepExpr::Sleep {
        duration,
        span: base.span(),
    }))
}

/// `flow::signal("name")[.timeout("1h")]`, parsed; `Err` for a malformed one.
fn classify_signal(base: &Expr) -> Option<Result<StepExpr<'static>, syn::Error>> {
    let (call, timeout) = match base {
        Expr::MethodCall(m) if m.method == "timeout" => {
            let (call, _) = signal_call(&m.receiver)?;
            let Some(arg) = m.args.first() else {
                return Some(Err(syn::Error::new(
                    m.method.span(),
                    "`timeout` needs a duration: `.timeout(\"1h\")`",
                )));
            };
            match arg {
                // A string is parsed now (and shown in the graph); any other expression is a
                // `Duration` computed at run time.
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(_),
                    ..
                }) => match duration::parse(arg, "a signal's timeout") {
                    Ok(d) => (call, Some(SignalTimeout::Fixed(d))),
                    Err(e) => return Some(Err(e)),
                },
                other => (call, Some(SignalTimeout::Expr(other.to_token_stream()))),
            }
        }
        other => (signal_call(other)?.0, None),
    };
    let ty = signal_call(&Expr::Call(call.clone())).and_then(|(_, t)| t);
    let name = match call.args.first() {
        Some(Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        })) if call.args.len() == 1 => s.clone(),
        _ => {
            return Some(Err(syn::Error::new(
                call.paren_token.span.join(),
                "a signal is named by a string literal: `flow::signal(\"approve\")` (the name is a node of the graph)",
            )));
        }
    };
    Some(Ok(StepExpr::Signal {
        name,
        timeout,
        ty,
        span: base.span(),
    }))
}

/// `flow::map!(items, |item| step(item), concurrency = 4, tolerate = 1)`.
struct MapExpr {
    items: Expr,
    pat: Pat,
    attrs: Vec<Attribute>,
    body: Expr,
    concurrency: Option<Expr>,
    tolerate: Option<Expr>,
    span: Span,
}

impl syn::parse::Parse for MapExpr {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        let span = input.span();
        let items: Expr = input.parse()?;
        input.parse::<Token![,]>()?;
        let closure: syn::ExprClosure = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "`flow::map!` takes the items, then a closure calling one step: `flow::map!(nodes, |node| probe(node), concurrency = 4)`",
            )
        })?;
        let mut concurrency = None;
        let mut tolerate = None;
        while input.parse::<Option<Token![,]>>()?.is_some() {
            if input.is_empty() {
                break;
            }
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let value: Expr = input.parse()?;
            match key.to_string().as_str() {
                kw::CONCURRENCY => concurrency = Some(value),
                kw::TOLERATE => tolerate = Some(value),
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        unknown_key("`map` key", other, kw::MAP_KEYS),
                    ));
                }
            }
        }
        let mut inputs = closure.inputs.into_iter();
        let (Some(pat), None) = (inputs.next(), inputs.next()) else {
            return Err(syn::Error::new(
                closure.inputs_begin.span,
                "the closure of `flow::map!` takes one item: `|item| step(item)`",
            ));
        };
        let mut body = *closure.body;
        let attrs = match &mut body {
            Expr::Call(c) => core::mem::take(&mut c.attrs),
            Expr::MethodCall(m) => core::mem::take(&mut m.attrs),
            _ => Vec::new(),
        };
        Ok(MapExpr {
            items,
            pat,
            attrs,
            body,
            concurrency,
            tolerate,
            span,
        })
    }
}

/// The step inside `CALL.await`, if the awaited expression is a call.
fn classify(base: &Expr) -> Option<StepExpr<'_>> {
    if let Some(signal) = classify_signal(base) {
        return Some(signal.unwrap_or_else(StepExpr::Bad));
    }
    if let Some(sleep) = classify_sleep(base) {
        return Some(sleep.unwrap_or_else(StepExpr::Bad));
    }
    match base {
        Expr::Call(c) => Some(StepExpr::Call(Call::Func {
            func: &c.func,
            args: c.args.iter().collect(),
        })),
        Expr::MethodCall(m) => Some(StepExpr::Call(Call::Method {
            recv: &m.receiver,
            method: &m.method,
            turbofish: m.turbofish.as_ref(),
            args: m.args.iter().collect(),
        })),
        Expr::Macro(m) => {
            let path = &m.mac.path;
            let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            let name = match segs.as_slice() {
                [one] => one.as_str(),
                [krate, one] if krate == "flow" => one.as_str(),
                _ => return None,
            };
            let settle = match name {
                "join" => false,
                "settle" => true,
                "map" => {
                    return Some(match syn::parse2::<MapExpr>(m.mac.tokens.clone()) {
                        Ok(x) => StepExpr::Map(Box::new(x)),
                        Err(e) => StepExpr::Bad(e),
                    });
                }
                _ => return None,
            };
            let parsed =
                Punctuated::<BranchExpr, Token![,]>::parse_terminated.parse2(m.mac.tokens.clone());
            let branches = match parsed {
                Ok(p) => p.into_iter().map(|b| (b.attrs, b.expr)).collect(),
                Err(_) => return None,
            };
            Some(StepExpr::Group {
                settle,
                branches,
                span: m.span(),
            })
        }
        _ => None,
    }
}

struct BranchExpr {
    attrs: Vec<Attribute>,
    expr: Expr,
}

impl syn::parse::Parse for BranchExpr {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        Ok(BranchExpr {
            attrs: input.call(Attribute::parse_outer)?,
            expr: input.parse()?,
        })
    }
}

/// The name of a step: the called function's last path segment, or the method's name.
fn step_name(call: &Call<'_>) -> String {
    match call {
        Call::Func { func, .. } | Call::Input { func, .. } => match func {
            Expr::Path(p) => p
                .path
                .segments
                .last()
                .map_or_else(|| "step".to_owned(), |s| s.ident.to_string()),
            other => other.to_token_stream().to_string(),
        },
        Call::Method { method, .. } => method.to_string(),
    }
}

impl Rewriter<'_> {
    /// Adds a node inside the current group, at the current place in the control flow.
    fn add_node(&mut self, name: &str, kind: Kind, policy: String, is_state: bool) -> u32 {
        let parent = self.parents.last().copied();
        let id = self.model.add(name, kind, policy, parent, is_state);
        let scope = self.scope.join(" / ");
        self.model.set_scope(id, &scope);
        id
    }

    /// Connects the frontier to node `id`, which becomes the frontier.
    fn attach(&mut self, id: u32) {
        for p in core::mem::take(&mut self.frontier) {
            self.model.edge_once(p.from, id, p.kind, p.label);
        }
        self.frontier = vec![Pending::plain(id)];
    }

    /// An early exit (`return`, or a `?` that returns an error) from the current position:
    /// an edge from every node of the frontier to the end.
    fn exit(&mut self, what: &str) {
        for p in self.frontier.clone() {
            let label = if p.label.is_empty() {
                what.to_owned()
            } else {
                format!("{}: {what}", p.label)
            };
            self.model
                .edge_once(p.from, crate::model::END, EdgeKind::Exit, label);
        }
    }

    /// Starts an arm of a branch (`node`, or no node when no arm has a step): the frontier is
    /// the branch's edge labelled `label`, or what it was before.
    fn enter_arm(&mut self, node: Option<u32>, before: &[Pending], label: &str, scope: String) {
        match node {
            Some(b) => {
                self.frontier = vec![Pending {
                    from: b,
                    kind: EdgeKind::Branch,
                    label: label.to_owned(),
                }];
                self.parents.push(b);
                self.scope.push(scope);
            }
            None => self.frontier = before.to_vec(),
        }
    }

    /// Ends an arm: returns where it leaves off.
    fn leave_arm(&mut self, node: Option<u32>) -> Vec<Pending> {
        if node.is_some() {
            self.parents.pop();
            self.scope.pop();
        }
        core::mem::take(&mut self.frontier)
    }

    /// `if cond { .. } else { .. }` (and `if let`): a branch node with an edge per arm,
    /// labelled with the condition as written and `else`, when an arm contains a step.
    fn visit_if(&mut self, i: &mut syn::ExprIf) {
        // The condition as written (before its steps are rewritten); it runs first, so a step
        // in it is a step before the branch.
        let cond = text(&i.cond);
        let cond_tokens = i.cond.to_token_stream();
        self.visit_expr_mut(&mut i.cond);
        let has_step = block_has_step(&i.then_branch)
            || i.else_branch
                .as_ref()
                .is_some_and(|(_, e)| expr_has_step(e));
        let node = has_step.then(|| {
            let id = self.add_node("if", Kind::Branch, String::new(), false);
            self.model.set_call(id, &cond_tokens);
            self.attach(id);
            id
        });
        let before = self.frontier.clone();
        let mut out = Vec::new();
        self.enter_arm(node, &before, &cond, format!("if {cond}"));
        self.visit_block_mut(&mut i.then_branch);
        out.extend(self.leave_arm(node));
        self.enter_arm(node, &before, "else", format!("if {cond}: else"));
        if let Some((_, e)) = &mut i.else_branch {
            self.visit_expr_mut(e);
        }
        out.extend(self.leave_arm(node));
        self.frontier = dedup(out);
    }

    /// `match x { pat => .. }`: a branch node with an edge per arm, labelled with its pattern
    /// (and guard) as written, when an arm contains a step.
    fn visit_match(&mut self, m: &mut syn::ExprMatch) {
        let scrutinee = text(&m.expr);
        let scrutinee_tokens = m.expr.to_token_stream();
        self.visit_expr_mut(&mut m.expr);
        let has_step = m.arms.iter().any(|a| expr_has_step(&a.body));
        let node = has_step.then(|| {
            let id = self.add_node(
                &format!("match {scrutinee}"),
                Kind::Branch,
                String::new(),
                false,
            );
            self.model.set_call(id, &scrutinee_tokens);
            self.attach(id);
            id
        });
        let before = self.frontier.clone();
        let mut out = Vec::new();
        for arm in &mut m.arms {
            // In syn 3 a guard is part of the pattern (`Pat::Guard`): the label shows both.
            let label = text(&arm.pat);
            self.enter_arm(node, &before, &label, format!("match {scrutinee}: {label}"));
            self.visit_pat_mut(&mut arm.pat);
            self.visit_expr_mut(&mut arm.body);
            out.extend(self.leave_arm(node));
        }
        self.frontier = dedup(out);
    }

    /// `for`, `while` and `loop`: a loop node around the steps of its body, an edge back to it
    /// after each iteration (and from each `continue`), and its exits (`done` when the loop
    /// ends by itself, and each `break`), when the body contains a step.
    fn visit_loop(&mut self, e: &mut Expr) {
        let (label, name, has_step) = match &*e {
            Expr::ForLoop(f) => (
                f.label.as_ref(),
                format!("for {} in {}", text(&f.pat), text(&f.expr)),
                block_has_step(&f.body),
            ),
            Expr::While(w) => (
                w.label.as_ref(),
                format!("while {}", text(&w.cond)),
                expr_has_step(&w.cond) || block_has_step(&w.body),
            ),
            Expr::Loop(l) => (l.label.as_ref(), "loop".to_owned(), block_has_step(&l.body)),
            _ => return,
        };
        let label = label.map(|l| l.name.ident.to_string());
        let ends_by_itself = !matches!(e, Expr::Loop(_));
        // The iterator of a `for` is evaluated once, before the loop.
        if let Expr::ForLoop(f) = e {
            self.visit_expr_mut(&mut f.expr);
        }
        let node = has_step.then(|| {
            let id = self.add_node(&name, Kind::Loop, String::new(), false);
            self.attach(id);
            id
        });
        let before = self.frontier.clone();
        if let Some(n) = node {
            self.frontier = vec![Pending::plain(n)];
            self.parents.push(n);
            self.scope.push(name);
        }
        self.loops.push(LoopFrame {
            label,
            breaks: Vec::new(),
            continues: Vec::new(),
        });
        match e {
            Expr::ForLoop(f) => self.visit_block_mut(&mut f.body),
            Expr::While(w) => {
                self.visit_expr_mut(&mut w.cond);
                self.visit_block_mut(&mut w.body);
            }
            Expr::Loop(l) => self.visit_block_mut(&mut l.body),
            _ => {}
        }
        let frame = self.loops.pop();
        let (breaks, continues) =
            frame.map_or((Vec::new(), Vec::new()), |f| (f.breaks, f.continues));
        let body_end = core::mem::take(&mut self.frontier);
        match node {
            Some(n) => {
                self.parents.pop();
                self.scope.pop();
                for p in dedup(body_end.into_iter().chain(continues).collect()) {
                    let label = if p.label.is_empty() {
                        String::new()
                    } else {
                        p.label
                    };
                    self.model.edge_once(p.from, n, EdgeKind::Loop, label);
                }
                let mut after = Vec::new();
                if ends_by_itself {
                    after.push(Pending {
                        from: n,
                        kind: EdgeKind::Sequence,
                        label: "done".to_owned(),
                    });
                }
                after.extend(breaks);
                self.frontier = dedup(after);
            }
            None => {
                let mut after = before;
                after.extend(body_end);
                after.extend(breaks);
                after.extend(continues);
                self.frontier = dedup(after);
            }
        }
    }

    /// `break` (`is_break`) or `continue`, to the loop labelled `label` or the innermost one:
    /// the frontier goes to that loop's exits or back to its head.
    fn jump(&mut self, label: Option<&syn::Lifetime>, is_break: bool) {
        let name = label.map(|l| l.ident.to_string());
        let frame = match &name {
            Some(n) => self
                .loops
                .iter_mut()
                .rev()
                .find(|f| f.label.as_deref() == Some(n.as_str())),
            None => self.loops.last_mut(),
        };
        let Some(frame) = frame else {
            // A `break` out of a labelled block: control goes on after the block, which the
            // graph follows as if it went on here.
            return;
        };
        let pending = core::mem::take(&mut self.frontier);
        if is_break {
            frame.breaks.extend(pending);
        } else {
            frame.continues.extend(pending);
        }
    }

    /// `step(args);` or `let _ = step(args);`: a call whose value is dropped. When that value
    /// is a future, the step never runs: a compile error says so.
    fn guard_unawaited(&mut self, e: &mut Expr) {
        let name = match &*e {
            Expr::Call(c) => match &*c.func {
                Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
                _ => None,
            },
            Expr::MethodCall(m) => Some(m.method.to_string()),
            _ => None,
        };
        let Some(name) = name else { return };
        let krate = &self.krate;
        let span = e.span();
        let marker = self.markers.path(&name, span);
        let v = Ident::new("__flow_v", Span::mixed_site());
        let new = quote_spanned! {span=> {
            let #v = #e;
            #[allow(unused_imports)]
            use #krate::__private::{FutureNo as _, FutureYes as _};
            let __flow_check = (&#krate::__private::Probe(&#v, ::core::marker::PhantomData::<()>)).flow_future();
            #krate::__private::unawaited::<#marker, _, _>(#v, __flow_check)
        }};
        if let Ok(x) = syn::parse2::<Expr>(new) {
            *e = x;
        }
    }

    /// `flow::signal("approve").timeout("1h")`: a signal node, and the wait through the run
    /// context (its result is handed to the body like a step's: `Result<T, E>`).
    fn signal_code(
        &mut self,
        name: &syn::LitStr,
        timeout: Option<SignalTimeout>,
        ty: Option<TokenStream>,
        span: Span,
    ) -> TokenStream {
        let krate = self.krate.clone();
        let ctx = self.ctx.clone();
        let label = self.next_label.take().unwrap_or_else(|| name.value());
        let policy = match &timeout {
            None => String::new(),
            Some(SignalTimeout::Fixed(d)) => {
                format!("timeout = {}", humantime::format_duration(*d))
            }
            Some(SignalTimeout::Expr(e)) => format!("timeout = {}", crate::control::text(e)),
        };
        let id = self.add_node(&label, Kind::Signal, policy, true);
        self.model.set_call(id, &quote!(signal #name));
        self.attach(id);
        let timeout = match timeout {
            Some(SignalTimeout::Fixed(d)) => {
                let d = duration::to_tokens(d);
                quote!(::core::option::Option::Some(#d))
            }
            Some(SignalTimeout::Expr(e)) => quote!(::core::option::Option::Some(#e)),
            None => quote!(::core::option::Option::None),
        };
        let ty = ty.unwrap_or_else(|| quote!(_));
        let node = quote!(#krate::NodeId(#id));
        let wait = if self.durable {
            Ident::new("durable_signal", span)
        } else {
            Ident::new("signal", span)
        };
        quote_spanned!(span=> #ctx.surface(#ctx.#wait::<#ty>(#node, #name, #timeout).await).await)
    }

    /// `flow::sleep("10m")`: a step node named `sleep` (or its label), and the wait through
    /// the run context; durable in a durable workflow (the wake-up time is recorded, so a
    /// restart does not extend it, and a worker may park the run meanwhile).
    fn sleep_code(&mut self, duration: SignalTimeout, span: Span) -> TokenStream {
        let krate = self.krate.clone();
        let ctx = self.ctx.clone();
        let label = self.next_label.take().unwrap_or_else(|| "sleep".to_owned());
        let text = match &duration {
            SignalTimeout::Fixed(d) => humantime::format_duration(*d).to_string(),
            SignalTimeout::Expr(e) => crate::control::text(e),
        };
        let id = self.add_node(&label, Kind::Step, format!("sleep = {text}"), true);
        self.model.set_call(id, &quote!(sleep #text));
        self.attach(id);
        let duration = match duration {
            SignalTimeout::Fixed(d) => duration::to_tokens(d),
            SignalTimeout::Expr(e) => e,
        };
        let node = quote!(#krate::NodeId(#id));
        let wait = if self.durable {
            Ident::new("durable_sleep", span)
        } else {
            Ident::new("sleep_step", span)
        };
        quote_spanned!(span=> #ctx.#wait(#node, #duration).await)
    }

    /// `flow::map!(items, |item| step(item), concurrency = N, tolerate = K)`: a map node, and
    /// the step inside it, run once per item through the run context.
    fn map_code(&mut self, map: MapExpr) -> TokenStream {
        let krate = self.krate.clone();
        let ctx = self.ctx.clone();
        let MapExpr {
            items,
            pat,
            mut attrs,
            body,
            concurrency,
            tolerate,
            span,
        } = map;
        let map_name = self.next_label.take().unwrap_or_else(|| "map".to_owned());
        let mid = self.add_node(
            &map_name,
            Kind::Map,
            [
                concurrency
                    .as_ref()
                    .map(|c| format!("concurrency = {}", text(c))),
                tolerate.as_ref().map(|t| format!("tolerate = {}", text(t))),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
            true,
        );
        self.attach(mid);
        let policy = self.policy_from_attrs(&mut attrs);
        let Some(StepExpr::Call(call)) = classify(&body) else {
            self.errors.spanned(&body, "the closure of `flow::map!` calls one step, such as `|node| probe(node)` (not awaited: the map awaits it)");
            return quote!(());
        };
        let name = self.next_label.take().unwrap_or_else(|| step_name(&call));
        self.parents.push(mid);
        self.scope.push("map".to_owned());
        let id = self.add_node(&name, Kind::Step, policy.display(), true);
        self.parents.pop();
        self.scope.pop();
        self.model.set_call(id, &crate::model::callee(&call));
        self.model.edge(mid, id, EdgeKind::Map, String::new());
        self.frontier = vec![Pending::plain(mid)];
        let g = Gen {
            krate: &self.krate,
            ctx: &self.ctx,
            exact: false,
            marker: false,
            error_ty: Some(&self.error_ty),
            markers: &self.markers,
            durable: self.durable,
        };
        // The arguments are evaluated in the closure (borrowing what they use, as a call
        // would); the step's future owns them.
        let (hoisted, owned_args) = hoist_args(&call, 0);
        let owned_call = with_args(&call, &owned_args);
        let code = g.step(id, &name, None, &policy, &owned_call, body.span());
        let item = Ident::new("__flow_item", Span::mixed_site());
        let concurrency = concurrency.map_or_else(|| quote!(0usize), |c| quote!(#c));
        let node = quote!(#krate::NodeId(#mid));
        let run = match tolerate {
            None => quote_spanned!(span=> #ctx.map(#node, __flow_items, #concurrency, |#item| {
                let #pat = #item;
                #(#hoisted)*
                async move { #code }
            })),
            Some(t) => {
                quote_spanned!(span=> #ctx.map_tolerant(#node, __flow_items, #concurrency, #t, |#item| {
                    let #pat = #item;
                    #(#hoisted)*
                    async move { #code }
                }))
            }
        };
        quote_spanned!(span=> {
            let #ctx = #ctx.by_ref();
            let __flow_items = #items;
            #ctx.surface(#run.await).await
        })
    }

    fn policy_from_attrs(&mut self, attrs: &mut Vec<Attribute>) -> Policy {
        let mut policy = Policy::default();
        let mut kept = Vec::new();
        for a in attrs.drain(..) {
            let Some(ident) = a.path().get_ident().map(Ident::to_string) else {
                kept.push(a);
                continue;
            };
            if ident == kw::LABEL {
                match a.parse_args::<Ident>() {
                    Ok(label) => {
                        self.labels.push(label.clone());
                        self.next_label = Some(label.to_string());
                    }
                    Err(_) => self.errors.spanned(
                        &a,
                        "a label is a name: `#[label(refetch)]` names this step `refetch` in the graph, the events and durable runs",
                    ),
                }
            } else if kw::STEP_POLICIES.contains(&ident.as_str()) {
                let name = Ident::new(&ident, a.path().span());
                let args = match &a.meta {
                    syn::Meta::Path(_) => ItemArgs::None,
                    syn::Meta::List(l) => {
                        ItemArgs::List(l.tokens.clone(), l.delimiter.span().join())
                    }
                    syn::Meta::NameValue(nv) => ItemArgs::Value(nv.value.clone()),
                };
                policy.add(Item { name, args }, kw::STEP_POLICIES, self.errors);
            } else if let Some(best) = closest(&ident, kw::STEP_POLICIES) {
                self.errors.spanned(
                    a.path(),
                    format!("unknown step attribute `{ident}`: did you mean `{best}`?"),
                );
            } else {
                kept.push(a);
            }
        }
        *attrs = kept;
        policy
    }

    /// Rewrites `expr` (an `.await` on a call or a join) into the step's code, given its policy.
    fn rewrite_await(&mut self, expr: &mut Expr, policy: Policy, policy_span: Option<Span>) {
        let Expr::Await(aw) = expr else { return };
        // Steps inside the arguments run first.
        syn::visit_mut::visit_expr_mut(self, &mut aw.base);
        let span = aw.span();
        let Some(kind) = classify(&aw.base) else {
            if let Some(s) = policy_span {
                self.errors.at(s, "step policies apply to a step: an awaited call such as `let x = step(args).await?;`");
            }
            return;
        };
        let ctx = self.ctx.clone();
        let new = match kind {
            StepExpr::Call(call) => {
                let code = self.step_code(&call, &policy, span);
                let r = Ident::new("__flow_sr", Span::mixed_site());
                let m = Ident::new("__flow_sm", Span::mixed_site());
                quote_spanned!(span=> {
                    let (#r, #m) = #code;
                    match #r {
                        ::core::result::Result::Ok(__flow_ok) => #ctx.surface_ok(__flow_ok, #m),
                        ::core::result::Result::Err(__flow_err) => {
                            #ctx.surface_as(::core::result::Result::Err(__flow_err), #m).await
                        }
                    }
                })
            }
            StepExpr::Group {
                settle,
                branches,
                span: gspan,
            } => {
                if let Some(s) = policy_span {
                    self.errors.at(s, "put policies on the steps inside `join!`, e.g. `flow::join!(#[retry(max_attempts = 3)] a(x), b(y))`");
                }
                self.group_code(settle, branches, gspan)
            }
            StepExpr::Map(map) => {
                if let Some(s) = policy_span {
                    self.errors.at(s, "put policies on the step inside `map!`, e.g. `flow::map!(nodes, |n| #[retry(max_attempts = 3)] probe(n))`");
                }
                self.map_code(*map)
            }
            StepExpr::Bad(e) => {
                self.errors.push(e);
                return;
            }
            StepExpr::Signal {
                name,
                timeout,
                ty,
                span,
            } => {
                if let Some(s) = policy_span {
                    self.errors.at(s, "a signal takes no step policies; give it a timeout: `flow::signal(\"approve\").timeout(\"1h\")`");
                }
                self.signal_code(&name, timeout, ty, span)
            }
            StepExpr::Sleep { duration, span } => {
                // A label names it; policies have nothing to act on.
                if let (false, Some(s)) = (policy.is_empty(), policy.span.or(policy_span)) {
                    self.errors.at(
                        s,
                        "a sleep takes no step policies (a label names it: `#[label(cool_down)]`)",
                    );
                }
                self.sleep_code(duration, span)
            }
        };
        match syn::parse2::<Expr>(new) {
            Ok(e) => *expr = e,
            Err(e) => self.errors.push(e),
        }
    }

    fn step_code(&mut self, call: &Call<'_>, policy: &Policy, span: Span) -> TokenStream {
        let name = self.next_label.take().unwrap_or_else(|| step_name(call));
        let id = self.add_node(&name, Kind::Step, policy.display(), true);
        self.model.set_call(id, &crate::model::callee(call));
        self.attach(id);
        let recovery = policy.catch.as_ref().map(|c| {
            let rname = match &c.recover {
                Expr::Path(p) => p
                    .path
                    .segments
                    .last()
                    .map_or_else(|| "recover".to_owned(), |s| s.ident.to_string()),
                _ => "recover".to_owned(),
            };
            let r = self.add_node(&rname, Kind::Recovery, String::new(), true);
            self.model.edge(id, r, EdgeKind::Catch, String::new());
            self.frontier.push(Pending::plain(r));
            r
        });
        let g = Gen {
            krate: &self.krate,
            ctx: &self.ctx,
            exact: false,
            marker: true,
            error_ty: Some(&self.error_ty),
            markers: &self.markers,
            durable: self.durable,
        };
        g.step(id, &name, recovery, policy, call, span)
    }

    fn group_code(
        &mut self,
        settle: bool,
        branches: Vec<(Vec<Attribute>, Expr)>,
        span: Span,
    ) -> TokenStream {
        let krate = self.krate.clone();
        let ctx = self.ctx.clone();
        if !(2..=5).contains(&branches.len()) {
            self.errors
                .at(span, "`join!` and `settle!` take 2 to 5 step calls");
            return quote!(());
        }
        let label = if settle { "settle" } else { "join" };
        let group_name = self.next_label.take().unwrap_or_else(|| label.to_owned());
        let gid = self.add_node(
            &group_name,
            Kind::Parallel,
            if settle {
                "settle".into()
            } else {
                String::new()
            },
            true,
        );
        self.attach(gid);
        self.parents.push(gid);
        self.scope.push(label.to_owned());
        let mut futs = Vec::new();
        let mut ends = Vec::new();
        for (mut attrs, e) in branches {
            let policy = self.policy_from_attrs(&mut attrs);
            let Some(StepExpr::Call(call)) = classify(&e) else {
                self.errors.spanned(&e, "each branch of `join!` must be a step call such as `seed(&nodes)` (not awaited: the group awaits them together)");
                continue;
            };
            let name = self.next_label.take().unwrap_or_else(|| step_name(&call));
            let id = self.add_node(&name, Kind::Step, policy.display(), true);
            self.model.set_call(id, &crate::model::callee(&call));
            self.model.edge(gid, id, EdgeKind::Parallel, String::new());
            ends.push(id);
            // Evaluate every branch's arguments first, in order, as an unawaited call would;
            // each branch then owns its arguments (`async move`) and borrows the context.
            let (hoisted, owned_args) = hoist_args(&call, futs.len());
            let owned_call = with_args(&call, &owned_args);
            let g = Gen {
                krate: &self.krate,
                ctx: &self.ctx,
                exact: false,
                marker: false,
                error_ty: Some(&self.error_ty),
                markers: &self.markers,
                durable: self.durable,
            };
            let code = g.step(id, &name, None, &policy, &owned_call, e.span());
            futs.push(quote!({ #(#hoisted)* async move { #code } }));
        }
        self.parents.pop();
        self.scope.pop();
        self.frontier = ends.into_iter().map(Pending::plain).collect();
        let gnode = quote!(#krate::NodeId(#gid));
        let n = futs.len();
        let f = match (settle, n) {
            (false, 2) => quote!(#krate::__private::try_join),
            (false, 3) => quote!(#krate::__private::try_join3),
            (false, 4) => quote!(#krate::__private::try_join4),
            (false, _) => quote!(#krate::__private::try_join5),
            (true, 2) => quote!(#krate::__private::join),
            (true, 3) => quote!(#krate::__private::join3),
            (true, 4) => quote!(#krate::__private::join4),
            (true, _) => quote!(#krate::__private::join5),
        };
        let call = quote_spanned!(span=> {
            let #ctx = #ctx.by_ref();
            #ctx.enter(#gnode);
            #f(#(#futs),*).await
        });
        if settle {
            call
        } else {
            quote_spanned!(span=> #ctx.surface(#call).await)
        }
    }
}

/// `let __flow_p{branch}_{i} = ARG;` for each argument, and the path expressions naming them.
fn hoist_args(call: &Call<'_>, branch: usize) -> (Vec<TokenStream>, Vec<Expr>) {
    let args: &[&Expr] = match call {
        Call::Func { args, .. } | Call::Method { args, .. } => args,
        Call::Input { .. } => &[],
    };
    let mut hoisted = Vec::new();
    let mut names = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let name = Ident::new(&format!("__flow_p{branch}_{i}"), Span::mixed_site());
        hoisted.push(quote_spanned!(a.span()=> let #name = #a;));
        names.push(Expr::Path(syn::ExprPath {
            attrs: Vec::new(),
            qself: None,
            path: name.into(),
        }));
    }
    (hoisted, names)
}

/// The same call with other arguments.
fn with_args<'a>(call: &Call<'a>, args: &'a [Expr]) -> Call<'a> {
    match call {
        Call::Func { func, .. } => Call::Func {
            func,
            args: args.iter().collect(),
        },
        Call::Method {
            recv,
            method,
            turbofish,
            ..
        } => Call::Method {
            recv,
            method,
            turbofish: *turbofish,
            args: args.iter().collect(),
        },
        Call::Input { func, input } => Call::Input { func, input },
    }
}

impl VisitMut for Rewriter<'_> {
    fn visit_stmt_mut(&mut self, s: &mut Stmt) {
        if let Stmt::Macro(m) = s {
            self.check_hiding(&m.mac);
        }
        let Some(attrs) = stmt_attrs(s) else {
            return syn::visit_mut::visit_stmt_mut(self, s);
        };
        let mut taken = core::mem::take(attrs);
        let policy_span = taken.iter().find(|a| is_policy_attr(a)).map(|a| a.span());
        let policy = self.policy_from_attrs(&mut taken);
        if let Some(attrs) = stmt_attrs(s) {
            *attrs = taken;
        }
        if policy.is_empty() && policy_span.is_none() {
            syn::visit_mut::visit_stmt_mut(self, s);
            // A call whose value is dropped: a step future that never runs is an error.
            match s {
                Stmt::Expr(e @ (Expr::Call(_) | Expr::MethodCall(_)), Some(_)) => {
                    self.guard_unawaited(e);
                }
                Stmt::Local(l) if matches!(l.pat, Pat::Wild(_)) => {
                    if let Some(init) = &mut l.init
                        && matches!(*init.expr, Expr::Call(_) | Expr::MethodCall(_))
                        && init.diverge.is_none()
                    {
                        self.guard_unawaited(&mut init.expr);
                    }
                }
                _ => {}
            }
            return;
        }
        // The statement's step: `let p = CALL.await?;`, `CALL.await?;` or `CALL.await`.
        let target = match s {
            Stmt::Local(l) => l.init.as_mut().map(|i| &mut *i.expr),
            Stmt::Expr(e, _) => Some(e),
            _ => None,
        };
        let mut tried = false;
        let target = target.map(|e| match e {
            Expr::Try(t) => {
                tried = true;
                &mut *t.expr
            }
            other => other,
        });
        match target {
            Some(e @ Expr::Await(_)) => {
                self.rewrite_await(e, policy, policy_span);
                if tried {
                    self.exit("?");
                }
            }
            _ => {
                if let Some(sp) = policy_span {
                    self.errors.at(
                        sp,
                        "step policies apply to a step: an awaited call such as `let x = step(args).await?;`, and this statement is not one",
                    );
                }
                syn::visit_mut::visit_stmt_mut(self, s);
            }
        }
    }

    fn visit_expr_mut(&mut self, e: &mut Expr) {
        match e {
            Expr::Await(aw) if classify(&aw.base).is_some() => {
                return self.rewrite_await(e, Policy::default(), None);
            }
            Expr::If(i) => return self.visit_if(i),
            Expr::Match(m) => return self.visit_match(m),
            Expr::ForLoop(_) | Expr::While(_) | Expr::Loop(_) => return self.visit_loop(e),
            Expr::Return(r) => {
                if let Some(x) = &mut r.expr {
                    self.visit_expr_mut(x);
                }
                self.exit("return");
                self.frontier.clear();
                return;
            }
            Expr::Try(t) => {
                self.visit_expr_mut(&mut t.expr);
                self.exit("?");
                return;
            }
            Expr::Break(b) => {
                if let Some(x) = &mut b.expr {
                    self.visit_expr_mut(x);
                }
                let label = b.label.clone();
                return self.jump(label.as_ref(), true);
            }
            Expr::Continue(c) => {
                let label = c.label.clone();
                return self.jump(label.as_ref(), false);
            }
            Expr::Macro(m) => self.check_hiding(&m.mac),
            _ => {}
        }
        syn::visit_mut::visit_expr_mut(self, e);
    }

    // Closures, async blocks and nested items have their own scope: not steps of this workflow.
    fn visit_expr_closure_mut(&mut self, _: &mut syn::ExprClosure) {}
    fn visit_expr_async_mut(&mut self, _: &mut syn::ExprAsync) {}
    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}

impl Rewriter<'_> {
    /// A label names one node: it must be unique and must not be another step's name (which
    /// would make the `#2` disambiguator, and so the identity, depend on source order).
    fn check_labels(&mut self) {
        for (i, label) in self.labels.iter().enumerate() {
            let name = label.to_string();
            if self.labels[..i].iter().any(|l| *l == name) {
                self.errors.spanned(
                    label,
                    format!("duplicate label `{name}`: each label names one step"),
                );
            } else if self.model.nodes.iter().filter(|n| n.name == name).count()
                > self.labels.iter().filter(|l| **l == name).count()
            {
                self.errors.spanned(
                    label,
                    format!(
                        "label `{name}` is also the name of another step: choose a name no step has"
                    ),
                );
            }
        }
    }

    /// A step call inside tokio's or futures' `join!`/`select!` would silently stop being a
    /// step: an error that points to `flow::join!`.
    fn check_hiding(&mut self, mac: &syn::Macro) {
        if let Some(name) = crate::control::hiding_macro(mac) {
            self.errors.spanned(
                mac,
                format!("calls inside `{name}!` are not steps of this workflow (the macro hides them from the graph, the state machine and the policies): use `flow::join!(a(x), b(y)).await?` to run steps concurrently, or bind each future to a variable first if it is not a step"),
            );
        }
    }
}

fn expand_fn(mut func: ItemFn, options: Options, errors: &mut Errors) -> Option<TokenStream> {
    let sig = check_signature(&func, errors)?;
    let krate = options.krate.clone();
    let fn_name = func.sig.ident.clone();
    let type_name = options.name.clone().unwrap_or_else(|| {
        Ident::new(
            &crate::model::upper_camel(&fn_name.to_string()),
            fn_name.span(),
        )
    });
    let state_name = format_ident!("{}State", type_name);
    let ctx = Ident::new("__flow_ctx", Span::mixed_site());
    let ret = &sig.ret;
    let (ok, err) = if sig.ok.is_empty() {
        (
            quote!(<#ret as #krate::__private::IsResult>::Ok),
            quote!(<#ret as #krate::__private::IsResult>::Err),
        )
    } else {
        (sig.ok.clone(), sig.err.clone())
    };

    // The steps' marker types are type parameters of the body's function, except where one
    // would shadow a name the body (or the function's own generics) use in the type namespace.
    let mut taken = crate::step::type_namespace_names(&func, &krate);
    taken.extend(func.sig.generics.params.iter().map(|p| match p {
        syn::GenericParam::Type(t) => t.ident.to_string(),
        syn::GenericParam::Const(c) => c.ident.to_string(),
        syn::GenericParam::Lifetime(l) => l.lifetime.ident.to_string(),
    }));
    let mut rw = Rewriter {
        model: Model::new(type_name.to_string()),
        errors,
        krate: krate.clone(),
        ctx: ctx.clone(),
        frontier: vec![Pending::plain(crate::model::START)],
        parents: Vec::new(),
        scope: Vec::new(),
        loops: Vec::new(),
        next_label: None,
        labels: Vec::new(),
        error_ty: err.clone(),
        markers: Markers::for_workflow(format_ident!("__flow_steps_{}", fn_name), taken),
        durable: options.durable.is_some(),
    };
    rw.visit_block_mut(&mut func.block);
    rw.check_labels();
    for p in core::mem::take(&mut rw.frontier) {
        rw.model
            .edge_once(p.from, crate::model::END, p.kind, p.label);
    }
    let mut model = rw.model;
    let markers = rw.markers.definitions();
    let marker_params = rw.markers.params();
    if !errors.is_empty() {
        return None;
    }
    // The body's function: the workflow's generics, then the steps' marker parameters; it is
    // called with the workflow's type and const parameters (lifetimes inferred) and `()` for
    // each marker.
    let (body_generics, body_turbofish) = {
        let mut g = func.sig.generics.clone();
        g.where_clause = None;
        for m in &marker_params {
            g.params
                .push(syn::GenericParam::Type(syn::TypeParam::from(m.clone())));
        }
        let args = func
            .sig
            .generics
            .params
            .iter()
            .filter_map(|p| match p {
                syn::GenericParam::Type(t) => Some(t.ident.to_token_stream()),
                syn::GenericParam::Const(c) => Some(c.ident.to_token_stream()),
                syn::GenericParam::Lifetime(_) => None,
            })
            .chain(marker_params.iter().map(|_| quote!(())))
            .collect::<Vec<_>>();
        let turbofish = if args.is_empty() {
            TokenStream::new()
        } else {
            quote!(::<#(#args),*>)
        };
        (g, turbofish)
    };
    model.name_variants();

    let vis = &func.vis;
    let attrs = &func.attrs;
    let body = &func.block;
    let param_pats: Vec<&Pat> = sig.params.iter().map(|(p, _)| p).collect();
    let param_tys: Vec<&Type> = sig.params.iter().map(|(_, t)| t).collect();
    // The generated function keeps the user's parameter names where they are plain names (its
    // docs read `spec: Spec`); patterns such as `(a, b): (u8, u8)` get a generated name.
    let arg_names: Vec<Ident> = sig
        .params
        .iter()
        .enumerate()
        .map(|(i, (pat, _))| match pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                // Cloned, not rebuilt from its text: a raw identifier (`r#type`) keeps its form.
                let mut i = p.ident.clone();
                i.set_span(Span::mixed_site().located_at(p.ident.span()));
                i
            }
            _ => Ident::new(&format!("__flow_arg{i}"), Span::mixed_site()),
        })
        .collect();
    let graph = model.graph_tokens(&krate);
    let fingerprint = model.fingerprint();
    let timeout = match options.timeout {
        Some(d) => {
            let d = duration::to_tokens(d);
            quote!(::core::option::Option::Some(#d))
        }
        None => quote!(::core::option::Option::None),
    };
    let variants: Vec<(u32, &Ident)> = model.state_variants().collect();
    let variant_docs: Vec<String> = variants
        .iter()
        .map(|(i, _)| match model.nodes.get(*i as usize) {
            Some(_) if *i == crate::model::START => " Before the first step.".to_owned(),
            Some(n) => format!(
                " At {} `{}`.",
                if n.kind == Kind::Parallel {
                    "the parallel group"
                } else {
                    "step"
                },
                n.name
            ),
            None => String::new(),
        })
        .collect();
    let variant_idents: Vec<&Ident> = variants.iter().map(|(_, v)| *v).collect();
    let node_arms: Vec<TokenStream> = variants
        .iter()
        .map(|(i, v)| quote!(#state_name::#v => #krate::NodeId(#i)))
        .collect();
    let view_arms: Vec<TokenStream> = variants
        .iter()
        .map(|(i, v)| quote!(#i => ::core::option::Option::Some(#state_name::#v)))
        .collect();
    let ret_is_result = quote_spanned!(ret.span()=> const _: fn() = || {
        fn __flow_assert_result<T: #krate::__private::IsResult>() {}
        __flow_assert_result::<#ret>();
    };);
    let doc_fn = format!(
        " This is a workflow: see [`{type_name}`] for its graph and state machine. Awaiting it runs the workflow (inside another workflow's step, as a child run) and returns `Result<_, flow::Error<_>>`."
    );
    let doc_type = format!(
        " The workflow of [`{fn_name}`]: implements `flow::Workflow`; run it with `flow::Runtime`.\n\n{}",
        model_mermaid(&model)
    );
    let doc_state = format!(
        " The states of [`{type_name}`]: start, one per step or group, and the terminal states."
    );
    let ctx_ty = quote!(#krate::__private::Ctx<#err>);
    let tuple_tys = quote!((#(#param_tys,)*));
    let undo_methods = options.undo.trait_methods();
    let undo_builder = options.undo.builder_calls();
    let state_items = quote! {
        #[doc = #doc_state]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash)]
        #[allow(clippy::enum_variant_names)]
        #vis enum #state_name {
            #(#[doc = #variant_docs] #variant_idents,)*
            /// The run completed.
            Completed,
            /// The run failed.
            Failed,
            /// The run was cancelled.
            Cancelled,
        }

        #[automatically_derived]
        impl #krate::WorkflowState for #state_name {
            fn node(&self) -> #krate::NodeId {
                match self {
                    #(#node_arms,)*
                    #state_name::Completed | #state_name::Failed | #state_name::Cancelled => #krate::NodeId::END,
                }
            }

            fn from_view(view: &#krate::StateView) -> ::core::option::Option<Self> {
                match view.status {
                    #krate::Status::Completed => return ::core::option::Option::Some(#state_name::Completed),
                    #krate::Status::Failed => return ::core::option::Option::Some(#state_name::Failed),
                    #krate::Status::Cancelled => return ::core::option::Option::Some(#state_name::Cancelled),
                    _ => {}
                }
                match view.node.0 {
                    #(#view_arms,)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    };

    let durable_method = options.durable.map(|_| {
        quote! {
            fn is_durable(&self) -> bool {
                true
            }
        }
    });
    // The `Workflow` impl of the generated type, generic or not.
    let workflow_impl_for = |impl_g: TokenStream, ty_g: TokenStream, where_send: TokenStream| {
        quote! {
            #[automatically_derived]
            impl #impl_g #krate::Workflow for #type_name #ty_g #where_send {
                type Input = #tuple_tys;
                type Output = #ok;
                type Error = #err;
                type State = #state_name;

                fn graph(&self) -> &'static #krate::Graph {
                    Self::GRAPH
                }

                fn timeout(&self) -> ::core::option::Option<::core::time::Duration> {
                    #timeout
                }

                #undo_methods
                #durable_method

                fn execute(
                    &self,
                    #ctx: #ctx_ty,
                    __flow_input: Self::Input,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<#ok, #krate::Error<#err>>> + ::core::marker::Send {
                    #[allow(clippy::needless_question_mark, clippy::unused_async, clippy::multiple_bound_locations, non_camel_case_types)]
                    async fn __flow_body #body_generics (#ctx: #ctx_ty, #(#param_pats: #param_tys),*) -> #ret #where_send #body
                    let (#(#arg_names,)*) = __flow_input;
                    async move {
                        let __flow_r = __flow_body #body_turbofish (::core::clone::Clone::clone(&#ctx), #(#arg_names),*).await;
                        #ctx.finish(__flow_r)
                    }
                }
            }
        }
    };

    if let (true, Receiver::Ref, Some(at)) = (sig.associated, sig.receiver, options.durable) {
        rw_errors_durable_method(at, errors);
        return None;
    }
    // `durable`: the workflow's values must be storable, checked where `durable` is written.
    // With the checks of the input (each parameter), output and error types, one message
    // each where `durable` is written (for a generic workflow, where it is used: its types
    // are known there).
    let durable_checks = options.durable.map(|at| {
        let values = param_tys
            .iter()
            .map(|t| (quote!(#t), quote!(stored_input)))
            .chain([
                (quote!(#ok), quote!(stored_result)),
                (quote!(#err), quote!(stored_error)),
            ]);
        let checks = values.map(|(t, check)| {
            quote_spanned! {at=>
                let __flow_v = #krate::__private::FlowValue::<#t>::new();
                #krate::__private::#check(&__flow_v, (&__flow_v).flow_value_stored());
            }
        });
        quote_spanned! {at=>
            #[allow(unused_imports)]
            use #krate::__private::{FlowStoredNo as _, FlowStoredYes as _};
            #(#checks)*
        }
    });
    let durable_impl = |impl_g: &TokenStream, ty_g: &TokenStream, where_send: &TokenStream| {
        options.durable.map(|at| {
            let checks = if impl_g.is_empty() {
                let c = &durable_checks;
                quote_spanned! {at=>
                    const _: () = {
                        #[allow(dead_code)]
                        fn __flow_stored() {
                            #c
                        }
                    };
                }
            } else {
                TokenStream::new()
            };
            quote_spanned! {at=>
                #[automatically_derived]
                impl #impl_g #krate::__private::DeclaredDurable for #type_name #ty_g #where_send {}
                #checks
            }
        })
    };
    if sig.associated {
        // An associated function of an `impl`: only associated items may be emitted, so the
        // workflow value comes from a method (`remediate_workflow`) whose opaque return type
        // carries the receiver, and the state enum and graph live inside that method.
        let wf_fn = format_ident!("{}_workflow", fn_name);
        let body_fn = format_ident!("__flow_body_{}", fn_name);
        let doc_wf = format!(
            " The workflow of [`Self::{fn_name}`]: a value implementing `flow::Workflow` (run it with `flow::Runtime`), holding the receiver.\n\n{}",
            model_mermaid(&model).replace("`Self::FINGERPRINT`", "`.graph().fingerprint`")
        );
        let doc_fn = format!(
            " This is a workflow: [`Self::{wf_fn}`] gives its graph and a value to run with a `flow::Runtime`. Awaiting it runs the workflow (inside another workflow's step, as a child run) and returns `Result<_, flow::Error<_>>`."
        );
        let (recv, recv_body, make, call_body, bound) = match sig.receiver {
            Receiver::Ref => (
                quote!(&self),
                quote!(&self,),
                quote!(self.#wf_fn()),
                quote!(move |#ctx: #ctx_ty, (#(#arg_names,)*): #tuple_tys| self.#body_fn #body_turbofish (#ctx, #(#arg_names),*)),
                quote!(+ '_),
            ),
            Receiver::Arc => (
                quote!(self: ::std::sync::Arc<Self>),
                quote!(self: ::std::sync::Arc<Self>,),
                quote!(self.#wf_fn()),
                quote!(move |#ctx: #ctx_ty, (#(#arg_names,)*): #tuple_tys| ::std::sync::Arc::clone(&self).#body_fn #body_turbofish (#ctx, #(#arg_names),*)),
                TokenStream::new(),
            ),
            Receiver::None => (
                TokenStream::new(),
                TokenStream::new(),
                quote!(Self::#wf_fn()),
                quote!(|#ctx: #ctx_ty, (#(#arg_names,)*): #tuple_tys| Self::#body_fn #body_turbofish (#ctx, #(#arg_names),*)),
                TokenStream::new(),
            ),
        };
        let generics = &func.sig.generics;
        let where_clause = &generics.where_clause;
        // `durable` (an owned receiver, or none): a value that can be registered and kept.
        let (wf_ret, make_durable) = match options.durable {
            Some(at) => (
                quote_spanned! {at=>
                    impl #krate::durable::DurableWorkflow<Input = #tuple_tys, Output = #ok, Error = #err> + ::core::clone::Clone
                },
                quote_spanned!(at=> .durable()),
            ),
            None => (
                quote!(impl #krate::Workflow<Input = #tuple_tys, Output = #ok, Error = #err> #bound),
                TokenStream::new(),
            ),
        };
        let comma = if sig.receiver == Receiver::None {
            TokenStream::new()
        } else {
            quote!(,)
        };
        return Some(quote! {
            #(#attrs)*
            #[doc = ""]
            #[doc = #doc_fn]
            #vis async fn #fn_name #generics (#recv #comma #(#arg_names: #param_tys),*) -> ::core::result::Result<#ok, #krate::Error<#err>> #where_clause {
                #krate::__private::run_nested(&#make, (#(#arg_names,)*)).await
            }

            #[doc = #doc_wf]
            #vis fn #wf_fn #generics (#recv) -> #wf_ret #where_clause {
                #ret_is_result
                #state_items
                const __FLOW_GRAPH: &'static #krate::Graph = #graph;
                #krate::__private::FnWorkflow::<_, _, _, #state_name, _>::new(__FLOW_GRAPH, #timeout, #call_body) #undo_builder #make_durable
            }

            #[doc(hidden)]
            #[allow(clippy::needless_question_mark, clippy::unused_async, non_snake_case, non_camel_case_types)]
            async fn #body_fn #body_generics (#recv_body #ctx: #ctx_ty, #(#param_pats: #param_tys),*) -> #ret #where_clause {
                #markers
                #body
            }
        });
    }

    if !func.sig.generics.params.is_empty()
        || func
            .sig
            .generics
            .where_clause
            .as_ref()
            .is_some_and(|w| !w.predicates.is_empty())
    {
        // A generic function: the workflow type is generic over the same parameters.
        let generics = &func.sig.generics;
        let (impl_g, ty_g, where_clause) = generics.split_for_impl();
        let phantom: Vec<TokenStream> = generics
            .params
            .iter()
            .filter_map(|p| match p {
                syn::GenericParam::Type(t) => {
                    let i = &t.ident;
                    Some(quote!(#i))
                }
                _ => None,
            })
            .collect();
        let send_bounds = phantom
            .iter()
            .map(|t| quote!(#t: ::core::marker::Send + ::core::marker::Sync));
        let preds = where_clause
            .iter()
            .flat_map(|w| w.predicates.iter())
            .map(ToTokens::to_token_stream)
            .chain(send_bounds);
        let where_send = quote!(where #(#preds,)*);
        let doc_new = format!(" The workflow of [`{fn_name}`], for these type parameters.");
        let mut workflow_impl = workflow_impl_for(
            impl_g.to_token_stream(),
            ty_g.to_token_stream(),
            where_send.clone(),
        );
        workflow_impl.extend(durable_impl(
            &impl_g.to_token_stream(),
            &ty_g.to_token_stream(),
            &where_send,
        ));
        return Some(quote! {
            #(#attrs)*
            #[doc = ""]
            #[doc = #doc_fn]
            #[allow(clippy::multiple_bound_locations)]
            #vis async fn #fn_name #impl_g (#(#arg_names: #param_tys),*) -> ::core::result::Result<#ok, #krate::Error<#err>> #where_send {
                #krate::__private::run_nested(&<#type_name #ty_g>::new(), (#(#arg_names,)*)).await
            }

            #ret_is_result

            #markers

            #[doc = #doc_type]
            #vis struct #type_name #impl_g (::core::marker::PhantomData<fn() -> (#(#phantom,)*)>) #where_clause;

            impl #impl_g #type_name #ty_g #where_clause {
                #[doc = #doc_new]
                pub const fn new() -> Self {
                    #type_name(::core::marker::PhantomData)
                }
                /// The workflow's static graph.
                pub const GRAPH: &'static #krate::Graph = #graph;
                /// A hash of the graph, fixed at compile time.
                pub const FINGERPRINT: u64 = #fingerprint;
            }

            impl #impl_g ::core::clone::Clone for #type_name #ty_g #where_clause {
                fn clone(&self) -> Self {
                    *self
                }
            }
            impl #impl_g ::core::marker::Copy for #type_name #ty_g #where_clause {}
            impl #impl_g ::core::default::Default for #type_name #ty_g #where_clause {
                fn default() -> Self {
                    Self::new()
                }
            }
            impl #impl_g ::core::fmt::Debug for #type_name #ty_g #where_clause {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.write_str(::core::stringify!(#type_name))
                }
            }

            #state_items

            #workflow_impl
        });
    }

    let mut workflow_impl =
        workflow_impl_for(TokenStream::new(), TokenStream::new(), TokenStream::new());
    workflow_impl.extend(durable_impl(
        &TokenStream::new(),
        &TokenStream::new(),
        &TokenStream::new(),
    ));
    Some(quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #doc_fn]
        #vis async fn #fn_name(#(#arg_names: #param_tys),*) -> ::core::result::Result<#ok, #krate::Error<#err>> {
            #krate::__private::run_nested(&#type_name, (#(#arg_names,)*)).await
        }

        #ret_is_result

        #markers

        #[doc = #doc_type]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::default::Default)]
        #vis struct #type_name;

        #state_items

        impl #type_name {
            /// The workflow's static graph.
            pub const GRAPH: &'static #krate::Graph = #graph;
            /// A hash of the graph, fixed at compile time.
            pub const FINGERPRINT: u64 = #fingerprint;
        }

        #workflow_impl
    })
}

/// The generated type's picture: the Mermaid `flowchart` (the same text as
/// `GRAPH.to_mermaid()`; rendered by Mermaid-aware viewers and mermaid.live, shown as text by
/// rustdoc, which needs no JavaScript or network for it) and a table of the steps, which
/// rustdoc renders offline. The graph's fingerprint closes it.
fn model_mermaid(m: &Model) -> String {
    format!(
        "# Graph\n\n```mermaid\n{}```\n\n# Steps\n\n{}\nGraph fingerprint: `{:#018x}` (`Self::FINGERPRINT`).",
        m.to_mermaid(),
        m.steps_table(),
        m.fingerprint()
    )
}
