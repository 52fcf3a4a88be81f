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

use crate::errors::{Errors, closest, unknown_key};
use crate::model::{EdgeKind, Kind, Model};
use crate::policy::{Item, ItemArgs, KeyValue, Policy};
use crate::step::{Call, Gen, Markers};
use crate::{duration, kw};

struct Options {
    timeout: Option<core::time::Duration>,
    name: Option<Ident>,
    krate: TokenStream,
}

fn parse_options(args: TokenStream, errors: &mut Errors) -> Options {
    let mut o = Options {
        timeout: None,
        name: None,
        krate: quote!(::flow),
    };
    let Some(pairs) = errors.ok(Punctuated::<KeyValue, Token![,]>::parse_terminated.parse2(args))
    else {
        return o;
    };
    for kv in pairs {
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
    a.path()
        .get_ident()
        .is_some_and(|i| kw::STEP_POLICIES.contains(&i.to_string().as_str()))
}

/// A policy attribute or a near miss (`#[retyr]`), which is reported as ours.
fn is_policy_like_attr(a: &Attribute) -> bool {
    a.path()
        .get_ident()
        .is_some_and(|i| closest(&i.to_string(), kw::STEP_POLICIES).is_some())
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
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.spanned(&sig.generics, "`#[workflow]` functions cannot be generic yet: the workflow type must name its input and error types");
        ok = false;
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
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                errors.spanned(r, "`#[workflow]` goes on a free function, not a method: the workflow's input is its parameters");
                ok = false;
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
    })
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
    /// Nodes the next step follows.
    frontier: Vec<u32>,
    /// The workflow's error type.
    error_ty: TokenStream,
    markers: Markers,
}

enum StepExpr<'a> {
    Call(Call<'a>),
    Group {
        settle: bool,
        branches: Vec<(Vec<Attribute>, Expr)>,
        span: Span,
    },
}

/// The step inside `CALL.await`, if the awaited expression is a call.
fn classify(base: &Expr) -> Option<StepExpr<'_>> {
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
    fn policy_from_attrs(&mut self, attrs: &mut Vec<Attribute>) -> Policy {
        let mut policy = Policy::default();
        let mut kept = Vec::new();
        for a in attrs.drain(..) {
            let Some(ident) = a.path().get_ident().map(Ident::to_string) else {
                kept.push(a);
                continue;
            };
            if kw::STEP_POLICIES.contains(&ident.as_str()) {
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
        };
        match syn::parse2::<Expr>(new) {
            Ok(e) => *expr = e,
            Err(e) => self.errors.push(e),
        }
    }

    fn step_code(&mut self, call: &Call<'_>, policy: &Policy, span: Span) -> TokenStream {
        let name = step_name(call);
        let id = self
            .model
            .add(&name, Kind::Step, policy.display(), None, true);
        self.model.set_call(id, &crate::model::callee(call));
        self.model
            .edges_from(&self.frontier.clone(), id, EdgeKind::Sequence);
        self.frontier = vec![id];
        let recovery = policy.catch.as_ref().map(|c| {
            let rname = match &c.recover {
                Expr::Path(p) => p
                    .path
                    .segments
                    .last()
                    .map_or_else(|| "recover".to_owned(), |s| s.ident.to_string()),
                _ => "recover".to_owned(),
            };
            let r = self
                .model
                .add(&rname, Kind::Recovery, String::new(), None, true);
            self.model.edge(id, r, EdgeKind::Catch, String::new());
            self.frontier.push(r);
            r
        });
        let g = Gen {
            krate: &self.krate,
            ctx: &self.ctx,
            exact: false,
            marker: true,
            error_ty: Some(&self.error_ty),
            markers: &self.markers,
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
        let gid = self.model.add(
            label,
            Kind::Parallel,
            if settle {
                "settle".into()
            } else {
                String::new()
            },
            None,
            true,
        );
        self.model
            .edges_from(&self.frontier.clone(), gid, EdgeKind::Sequence);
        let mut futs = Vec::new();
        let mut ends = Vec::new();
        for (mut attrs, e) in branches {
            let policy = self.policy_from_attrs(&mut attrs);
            let Some(StepExpr::Call(call)) = classify(&e) else {
                self.errors.spanned(&e, "each branch of `join!` must be a step call such as `seed(&nodes)` (not awaited: the group awaits them together)");
                continue;
            };
            let name = step_name(&call);
            let id = self
                .model
                .add(&name, Kind::Step, policy.display(), Some(gid), false);
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
            };
            let code = g.step(id, &name, None, &policy, &owned_call, e.span());
            futs.push(quote!({ #(#hoisted)* async move { #code } }));
        }
        self.frontier = ends;
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
            return syn::visit_mut::visit_stmt_mut(self, s);
        }
        // The statement's step: `let p = CALL.await?;`, `CALL.await?;` or `CALL.await`.
        let target = match s {
            Stmt::Local(l) => l.init.as_mut().map(|i| &mut *i.expr),
            Stmt::Expr(e, _) => Some(e),
            _ => None,
        };
        let target = target.map(|e| match e {
            Expr::Try(t) => &mut *t.expr,
            other => other,
        });
        match target {
            Some(e @ Expr::Await(_)) => self.rewrite_await(e, policy, policy_span),
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
        if let Expr::Await(aw) = e
            && classify(&aw.base).is_some()
        {
            return self.rewrite_await(e, Policy::default(), None);
        }
        syn::visit_mut::visit_expr_mut(self, e);
    }

    // Closures, async blocks and nested items have their own scope: not steps of this workflow.
    fn visit_expr_closure_mut(&mut self, _: &mut syn::ExprClosure) {}
    fn visit_expr_async_mut(&mut self, _: &mut syn::ExprAsync) {}
    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
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

    let mut rw = Rewriter {
        model: Model::new(type_name.to_string()),
        errors,
        krate: krate.clone(),
        ctx: ctx.clone(),
        frontier: vec![crate::model::START],
        error_ty: err.clone(),
        markers: Markers::new(format_ident!("__flow_steps_{}", fn_name)),
    };
    rw.visit_block_mut(&mut func.block);
    let frontier = rw.frontier.clone();
    rw.model
        .edges_from(&frontier, crate::model::END, EdgeKind::Sequence);
    let mut model = rw.model;
    let markers = rw.markers.definitions();
    if !errors.is_empty() {
        return None;
    }
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
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Ident::new(
                &p.ident.to_string(),
                Span::mixed_site().located_at(p.ident.span()),
            ),
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
    let variant_idents = variants.iter().map(|(_, v)| *v);
    let node_arms = variants
        .iter()
        .map(|(i, v)| quote!(#state_name::#v => #krate::NodeId(#i)));
    let view_arms = variants
        .iter()
        .map(|(i, v)| quote!(#i => ::core::option::Option::Some(#state_name::#v)));
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
    let ctx_ty = quote!(#krate::Ctx<#err>);
    let tuple_tys = quote!((#(#param_tys,)*));

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

        impl #type_name {
            /// The workflow's static graph.
            pub const GRAPH: &'static #krate::Graph = #graph;
            /// A hash of the graph, fixed at compile time.
            pub const FINGERPRINT: u64 = #fingerprint;
        }

        #[automatically_derived]
        impl #krate::Workflow for #type_name {
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

            fn execute(
                &self,
                #ctx: #ctx_ty,
                __flow_input: Self::Input,
            ) -> impl ::core::future::Future<Output = ::core::result::Result<#ok, #krate::Error<#err>>> + ::core::marker::Send {
                #[allow(clippy::needless_question_mark, clippy::unused_async)]
                async fn __flow_body(#ctx: #ctx_ty, #(#param_pats: #param_tys),*) -> #ret #body
                let (#(#arg_names,)*) = __flow_input;
                async move {
                    let __flow_r = __flow_body(::core::clone::Clone::clone(&#ctx), #(#arg_names),*).await;
                    #ctx.finish(__flow_r)
                }
            }
        }
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
