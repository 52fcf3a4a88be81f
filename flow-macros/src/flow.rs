//! `flow!`: a pipeline of steps composed inline, expanded into a state enum whose variants
//! carry the typed value on their incoming edge, and a driver that loops over it.
//!
//! Grammar (the README documents the same):
//!
//! ```text
//! flow     := [option (',' option)* ';'] pipeline
//! option   := 'name' '=' STRING | 'timeout' '=' STRING | 'error' '=' TYPE
//! pipeline := stage ('->' stage)*
//! stage    := unit ['[' policy (',' policy)* ']']
//! unit     := PATH                                        step: async fn(In) -> Result<Out, E>
//!           | '(' pipeline ('&' pipeline)+ ')'            parallel: output is a tuple
//!           | '(' pipeline ')'                            grouping
//!           | 'map' '(' pipeline (',' KEY '=' INT)* ')'   over an IntoIterator: keys concurrency, tolerate
//!           | 'branch' '(' EXPR ')' '{' (PAT '=>' pipeline ','?)+ '}'
//! policy   := 'retry' '(' KEY '=' VALUE, .. ')' | 'timeout' '=' STRING
//!           | 'compensate' '=' EXPR | 'catch' '(' EXPR [',' ('when' '=' EXPR | 'on' '=' KIND)] ')' | 'settle'
//! ```
//!
//! Input/output:
//!
//! ```text
//! flow! { fetch -> (a & b) -> store }
//! ```
//!
//! ```text
//! {
//!     enum __FlowState<T0, T1, T2, T3> { Start(T0), Fetch(T0), Join(T1), Store(T2), Completed(T3), .. }
//!     Flow::new(GRAPH, __FlowState::Start, None, move |ctx, s| async move {
//!         let mut s = s;
//!         loop {
//!             s = match s {
//!                 Start(v) => Fetch(v),
//!                 Fetch(v) => Join(ctx.step(NodeId(2), ctx.exact(fetch(v))).await?),
//!                 Join(v) => Store({ ctx.enter(NodeId(3)); try_join(branch a, branch b).await? }),
//!                 Store(v) => Completed(ctx.step(NodeId(6), ctx.exact(store(v))).await?),
//!                 Completed(v) => return Ok(v),
//!                 ..
//!             }
//!         }
//!     })
//! }
//! ```
//!
//! Steps at the top level and in branch arms are states; the steps inside a parallel branch or
//! a map's body run within their group's state (they still enter their own node, so every
//! step is observed).

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitInt, LitStr, Pat, Token, Type};

use crate::errors::{Errors, unknown_key};
use crate::model::{EdgeKind, Kind, Model};
use crate::policy::{Item, Policy};
use crate::step::{Call, Gen, Markers, respan};
use crate::{duration, kw};

// ---------------------------------------------------------------- syntax

struct FlowInput {
    krate: TokenStream,
    /// The closures of closure and method stages, hoisted out of the driver (see
    /// [`Parser::closure_step`]).
    env: Vec<(Ident, TokenStream)>,
    name: Option<LitStr>,
    timeout: Option<core::time::Duration>,
    error: Option<Type>,
    /// `durable`: where it was written.
    durable: Option<Span>,
    undo: crate::workflow::UndoOptions,
    pipeline: Pipeline,
}

struct Pipeline {
    stages: Vec<Stage>,
}

struct Stage {
    unit: Unit,
    policy: Policy,
}

enum Unit {
    /// A step, with its label (`refetch: fetch`) or the name of a closure's call, and for a
    /// closure or method stage the tokens hashed into the fingerprint.
    Step(Expr, Option<Ident>, Option<TokenStream>),
    Parallel(Vec<Pipeline>, Span),
    Group(Pipeline),
    Map {
        body: Pipeline,
        concurrency: usize,
        tolerate: Option<usize>,
        span: Span,
    },
    Branch {
        selector: Expr,
        arms: Vec<(Pat, Pipeline)>,
        span: Span,
    },
    /// `signal("approve", timeout = "1h")`: waits for a message; outputs `(input, message)`.
    Signal {
        name: LitStr,
        timeout: Option<core::time::Duration>,
        span: Span,
    },
}

/// Parsing records non-fatal problems (bad policies, unknown keys) here and keeps going.
struct Parser<'a> {
    errors: &'a mut Errors,
    /// Explicit step labels, in order.
    labels: Vec<Ident>,
    /// Names of unlabeled steps (their function's name).
    names: Vec<Ident>,
    /// Closure and method stages, normalised to one-argument closures: each is bound once
    /// when the flow is built, and the driver calls it by reference.
    env: Vec<(Ident, TokenStream)>,
    /// The policy list that ended a closure stage (see [`Parser::closure`]).
    pending_policy: Option<TokenStream>,
}

impl Parser<'_> {
    /// Labels name steps in the graph, the events and durable runs: an explicit label must be
    /// unique, and must not be another step's name. (An unlabeled function may repeat: its
    /// nodes are told apart by position.)
    fn check_labels(&mut self) {
        for (i, label) in self.labels.iter().enumerate() {
            if let Some(first) = self.labels[..i].iter().find(|l| *l == label) {
                let mut e = syn::Error::new(
                    label.span(),
                    format!(
                        "duplicate step label `{label}`: each label names one step of the flow"
                    ),
                );
                e.combine(syn::Error::new(
                    first.span(),
                    format!("`{label}` first labels a step here"),
                ));
                self.errors.push(e);
            } else if self.names.iter().any(|n| n == label) {
                self.errors.push(syn::Error::new(
                    label.span(),
                    format!("step label `{label}` is already the name of another step in this flow; choose another label"),
                ));
            }
        }
    }
}

/// Whether the option `durable` (a flag) is next: `durable,` or `durable;`.
fn is_durable_flag(input: ParseStream) -> bool {
    let fork = input.fork();
    fork.parse::<Ident>().is_ok_and(|i| i == kw::DURABLE)
        && (fork.peek(Token![,]) || fork.peek(Token![;]))
}

/// Whether a closure starts here: `|x| ..`, `|| ..`, `move |x| ..`.
fn is_closure_start(input: ParseStream) -> bool {
    input.peek(Token![|]) || input.peek(Token![||]) || input.peek(Token![move])
}

/// The name of a closure stage: the function or method its body calls (`|id| db.fetch(id)` is
/// `fetch`), or `closure`.
fn closure_name(body: &Expr) -> String {
    match body {
        Expr::Call(c) => match &*c.func {
            Expr::Path(p) => p
                .path
                .segments
                .last()
                .map_or_else(|| "closure".to_owned(), |s| s.ident.to_string()),
            _ => "closure".to_owned(),
        },
        Expr::MethodCall(m) => m.method.to_string(),
        Expr::Await(a) => closure_name(&a.base),
        Expr::Block(b) if b.block.stmts.len() == 1 => match b.block.stmts.first() {
            Some(syn::Stmt::Expr(e, None)) => closure_name(e),
            _ => "closure".to_owned(),
        },
        _ => "closure".to_owned(),
    }
}

impl Parser<'_> {
    fn input(&mut self, input: ParseStream) -> syn::Result<FlowInput> {
        // The facade passes its own path first: `$crate;`.
        let mut krate = TokenStream::new();
        while !input.peek(Token![;]) {
            if input.is_empty() {
                return Err(
                    input.error("flow_inner! expects the crate path first; use `flow::flow!`")
                );
            }
            krate.extend([input.parse::<TokenTree>()?]);
        }
        input.parse::<Token![;]>()?;
        let mut out = FlowInput {
            krate,
            env: Vec::new(),
            name: None,
            timeout: None,
            error: None,
            durable: None,
            undo: crate::workflow::UndoOptions::default(),
            pipeline: Pipeline { stages: Vec::new() },
        };
        // Options: `key = value, ...;` and the flag `durable` (a pipeline never starts with
        // `ident =`, nor has a `,` or `;` after its first step).
        if (input.peek(Ident) && input.peek2(Token![=]) && !input.peek2(Token![=>]))
            || is_durable_flag(input)
        {
            loop {
                if is_durable_flag(input) {
                    let key: Ident = input.parse()?;
                    if cfg!(feature = "durable") {
                        out.durable = Some(key.span());
                    } else {
                        self.errors.spanned(
                            &key,
                            "durable flows need the `durable` feature of `flow`: `flow = { version = \"..\", features = [\"durable\"] }`",
                        );
                    }
                    if input.parse::<Option<Token![,]>>()?.is_none() {
                        break;
                    }
                    continue;
                }
                let key: Ident = input.parse()?;
                if key == kw::DURABLE {
                    return Err(syn::Error::new(
                        key.span(),
                        "`durable` is a flag, not a `key = value` option: `flow! { name = \"provision\", durable; .. }`",
                    ));
                }
                input.parse::<Token![=]>()?;
                if [kw::COMPENSATION_TIMEOUT, kw::COMPENSATE_ON_DROP]
                    .contains(&key.to_string().as_str())
                {
                    let value: Expr = input.parse()?;
                    out.undo.parse(&key, &value, self.errors);
                } else {
                    match key.to_string().as_str() {
                        kw::NAME => out.name = Some(input.parse()?),
                        kw::TIMEOUT => {
                            let e: Expr = input.parse()?;
                            out.timeout = self.errors.ok(duration::parse(&e, "the flow timeout"));
                        }
                        kw::ERROR => out.error = Some(input.parse()?),
                        kw::CRATE => {
                            let lit: LitStr = input.parse()?;
                            match lit.parse::<syn::Path>() {
                                Ok(p) => out.krate = p.into_token_stream(),
                                Err(_) => self
                                    .errors
                                    .spanned(&lit, "`crate` must be a path such as \"::my_flow\""),
                            }
                        }
                        other => {
                            self.errors.spanned(
                                &key,
                                unknown_key("`flow!` option", other, kw::FLOW_OPTIONS),
                            );
                            let _: Expr = input.parse()?;
                        }
                    }
                }
                if input.parse::<Option<Token![,]>>()?.is_none() {
                    break;
                }
            }
            input.parse::<Token![;]>().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "end the `flow!` options with `;` before the pipeline",
                )
            })?;
            // `name = "x"; error = E; plan`: an option after the `;`.
            if (input.peek(Ident) && input.peek2(Token![=]) && !input.peek2(Token![=>]))
                || is_durable_flag(input)
            {
                let key: Ident = input.fork().parse()?;
                return Err(syn::Error::new(
                    key.span(),
                    format!(
                        "`{key}` looks like an option after the options ended: separate `flow!` options with `,` and end them with one `;` (`name = \"x\", {key} = ..; step -> step`)"
                    ),
                ));
            }
        }
        if input.is_empty() {
            return Err(
                input.error("a flow needs at least one step: `flow! { validate -> store }`")
            );
        }
        out.pipeline = self.pipeline(input)?;
        if !input.is_empty() {
            return Err(input.error("expected `->` between steps, or the end of the flow"));
        }
        out.env = core::mem::take(&mut self.env);
        Ok(out)
    }

    fn pipeline(&mut self, input: ParseStream) -> syn::Result<Pipeline> {
        let mut stages = vec![self.stage(input)?];
        while input.peek(Token![->]) {
            let arrow = input.parse::<Token![->]>()?;
            if input.is_empty() {
                return Err(syn::Error::new_spanned(arrow, "expected a step after `->`"));
            }
            stages.push(self.stage(input)?);
        }
        Ok(Pipeline { stages })
    }

    fn stage(&mut self, input: ParseStream) -> syn::Result<Stage> {
        let unit = self.unit(input)?;
        let mut policy = Policy::default();
        let list = if let Some(tokens) = self.pending_policy.take() {
            Some(syn::parse::Parser::parse2(
                Punctuated::<Item, Token![,]>::parse_terminated,
                tokens,
            )?)
        } else if input.peek(syn::token::Bracket) {
            let content;
            syn::bracketed!(content in input);
            Some(Punctuated::<Item, Token![,]>::parse_terminated(&content)?)
        } else {
            None
        };
        if let Some(items) = list {
            let allowed: &[&str] = match unit {
                Unit::Parallel(..) => &[kw::SETTLE],
                Unit::Step(..) => kw::STEP_POLICIES,
                _ => &[],
            };
            for item in items {
                if item.name == kw::SETTLE && !matches!(unit, Unit::Parallel(..)) {
                    self.errors.spanned(
                        &item.name,
                        "`settle` goes on a parallel group, `(a & b) [settle]`: it makes the group wait for every branch",
                    );
                    continue;
                }
                if allowed.is_empty() {
                    self.errors.spanned(&item.name, "policies go on steps (and `settle` on a parallel group), not on `map`, `branch` or a grouping");
                    continue;
                }
                policy.add(item, allowed, self.errors);
            }
        }
        Ok(Stage { unit, policy })
    }

    fn unit(&mut self, input: ParseStream) -> syn::Result<Unit> {
        let lookahead = input.lookahead1();
        if lookahead.peek(syn::token::Paren) {
            let content;
            let paren = syn::parenthesized!(content in input);
            if content.is_empty() {
                return Err(syn::Error::new(
                    paren.span.join(),
                    "empty parallel group: write `(a & b)` with at least two branches",
                ));
            }
            let mut branches = vec![self.pipeline(&content)?];
            while content.peek(Token![&]) {
                content.parse::<Token![&]>()?;
                if content.is_empty() {
                    return Err(content.error("expected a branch after `&`"));
                }
                branches.push(self.pipeline(&content)?);
            }
            if !content.is_empty() {
                return Err(
                    content.error("expected `&` between parallel branches, or `->` between steps")
                );
            }
            if branches.len() == 1 {
                return Ok(Unit::Group(branches.remove(0)));
            }
            return Ok(Unit::Parallel(branches, paren.span.join()));
        }
        // A closure stage: `|id| self.db.fetch(id)`.
        if is_closure_start(input) {
            let c = self.closure(input)?;
            return Ok(self.closure_step(c, None));
        }
        // `label: step`: a single colon (a path has two).
        if input.peek(Ident) && input.peek2(Token![:]) && !input.peek2(Token![::]) {
            let label: Ident = input.parse()?;
            input.parse::<Token![:]>()?;
            self.labels.push(label.clone());
            if is_closure_start(input) {
                let c = self.closure(input)?;
                return Ok(self.closure_step(c, Some(label)));
            }
            let path: syn::ExprPath = input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!("expected the step that `{label}:` labels, such as `{label}: fetch`"),
                )
            })?;
            if input.peek(Token![.]) {
                return self.method_step(input, path, Some(label));
            }
            return Ok(Unit::Step(Expr::Path(path), Some(label), None));
        }
        if lookahead.peek(Ident)
            || lookahead.peek(Token![::])
            || lookahead.peek(Token![crate])
            || lookahead.peek(Token![self])
            || lookahead.peek(Token![super])
        {
            if input.peek(Ident) && input.peek2(syn::token::Paren) {
                let fork = input.fork();
                let name: Ident = fork.parse()?;
                if name == kw::MAP {
                    return self.map(input);
                }
                if name == kw::BRANCH {
                    return self.branch(input);
                }
                if name == kw::SIGNAL {
                    return self.signal(input);
                }
                return Err(syn::Error::new(
                    name.span(),
                    format!(
                        "a step is named, not called: write `{name}`, and the value from the previous step is its argument"
                    ),
                ));
            }
            let path: syn::ExprPath = input.parse()?;
            if input.peek(Token![.]) {
                return self.method_step(input, path, None);
            }
            if let Some(last) = path.path.segments.last() {
                self.names.push(last.ident.clone());
            }
            return Ok(Unit::Step(Expr::Path(path), None, None));
        }
        Err(lookahead.error())
    }

    /// The closure of a closure stage. Its body ends at the stage's end: a `->`, a `&` or a
    /// `,` at the top level, or the end of the group; a bracketed list right before that end is
    /// the stage's policies (`|id| db.fetch(id) [retry(max_attempts = 3)]`), not an index, and
    /// is kept for [`stage`](Self::stage).
    fn closure(&mut self, input: ParseStream) -> syn::Result<syn::ExprClosure> {
        let mut tokens: Vec<TokenTree> = input.step(|cursor| {
            let mut out = Vec::new();
            let mut rest = *cursor;
            // The head (`move`, the `|..|` parameters) comes first: its commas separate
            // parameters, not stages.
            let mut bars = 0;
            while let Some((tt, next)) = rest.token_tree() {
                if bars < 2 {
                    if matches!(&tt, TokenTree::Punct(p) if p.as_char() == '|') {
                        bars += 1;
                    }
                    out.push(tt);
                    rest = next;
                    continue;
                }
                if let TokenTree::Punct(p) = &tt {
                    let c = p.as_char();
                    let joint = p.spacing() == proc_macro2::Spacing::Joint;
                    let arrow = c == '-'
                        && joint
                        && matches!(next.token_tree(), Some((TokenTree::Punct(q), _)) if q.as_char() == '>');
                    let amp = c == '&'
                        && !joint
                        && !matches!(out.last(), Some(TokenTree::Punct(q)) if q.as_char() == '&' && q.spacing() == proc_macro2::Spacing::Joint);
                    if arrow || amp || c == ',' {
                        break;
                    }
                }
                out.push(tt);
                rest = next;
            }
            Ok((out, rest))
        })?;
        if let Some(TokenTree::Group(g)) = tokens.last()
            && g.delimiter() == proc_macro2::Delimiter::Bracket
            && tokens.len() > 1
        {
            self.pending_policy = Some(g.stream());
            tokens.pop();
        }
        let stream: TokenStream = tokens.into_iter().collect();
        syn::parse2::<syn::ExprClosure>(stream)
    }

    /// A closure stage. Its closure is normalised to take the value on the incoming edge as
    /// one argument (`|| f()` ignores it, `|a, b| f(a, b)` destructures a pair), hoisted out of
    /// the driver under a generated name, and named in the graph after the step it calls (or
    /// its label).
    ///
    /// ```text
    /// |a, b| db.put(a, b)    =>    let __flow_env0 = { let f = |a, b| db.put(a, b); move |(a, b)| f(a, b) };
    /// ```
    fn closure_step(&mut self, c: syn::ExprClosure, label: Option<Ident>) -> Unit {
        let span = c.span();
        let name = label
            .as_ref()
            .map_or_else(|| closure_name(&c.body), ToString::to_string);
        let ident = format_ident!("__flow_env{}", self.env.len(), span = Span::mixed_site());
        let fingerprint = c.to_token_stream();
        let f = Ident::new("__flow_f", Span::mixed_site());
        let args: Vec<Ident> = (0..c.inputs.len())
            .map(|i| format_ident!("__flow_a{}", i, span = Span::mixed_site()))
            .collect();
        let tokens = match args.len() {
            1 => quote!(#c),
            0 => quote_spanned!(span=> { let #f = #c; move |_| #f() }),
            _ => quote_spanned!(span=> { let #f = #c; move |(#(#args,)*)| #f(#(#args),*) }),
        };
        self.env.push((ident.clone(), tokens));
        if label.is_none()
            && let Ok(n) = syn::parse_str::<Ident>(&name)
        {
            self.names.push(n);
        }
        let named = syn::parse_str::<Ident>(&name)
            .unwrap_or_else(|_| Ident::new("closure", Span::call_site()));
        let path = Expr::Path(syn::ExprPath {
            attrs: Vec::new(),
            qself: None,
            path: ident.into(),
        });
        Unit::Step(path, Some(named), Some(fingerprint))
    }

    /// A method stage on a captured value, `db.fetch` or `self.db.fetch`: a closure stage
    /// `|v| db.fetch(v)` named after the method.
    fn method_step(
        &mut self,
        input: ParseStream,
        path: syn::ExprPath,
        label: Option<Ident>,
    ) -> syn::Result<Unit> {
        let mut receiver = Expr::Path(path);
        let mut method: Option<Ident> = None;
        while input.peek(Token![.]) {
            input.parse::<Token![.]>()?;
            let next: Ident = input.parse()?;
            if let Some(m) = method.take() {
                receiver = syn::parse_quote!(#receiver.#m);
            }
            method = Some(next);
        }
        let Some(method) = method else {
            return Err(input.error("expected a method name after `.`"));
        };
        if input.peek(syn::token::Paren) {
            return Err(syn::Error::new(
                method.span(),
                format!(
                    "a step is named, not called: write `{}.{method}`, and the value from the previous step is its argument (or use a closure: `|v| {}.{method}(v, ..)`)",
                    receiver.to_token_stream(),
                    receiver.to_token_stream()
                ),
            ));
        }
        let v = Ident::new("__flow_in", Span::mixed_site());
        let c: syn::ExprClosure =
            syn::parse_quote_spanned!(method.span()=> |#v| #receiver.#method(#v));
        let label = label.or_else(|| Some(method.clone()));
        let unit = self.closure_step(c, label);
        Ok(unit)
    }

    fn map(&mut self, input: ParseStream) -> syn::Result<Unit> {
        let kw_ident: Ident = input.parse()?;
        let content;
        syn::parenthesized!(content in input);
        if content.is_empty() {
            return Err(syn::Error::new(
                kw_ident.span(),
                "`map` needs a body: `map(step, concurrency = 4)`",
            ));
        }
        let body = self.pipeline(&content)?;
        let mut concurrency = 0usize;
        let mut tolerate = None;
        while content.parse::<Option<Token![,]>>()?.is_some() {
            if content.is_empty() {
                break;
            }
            let key: Ident = content.parse()?;
            content.parse::<Token![=]>()?;
            let value: LitInt = content.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!("`{key}` takes a whole number, such as `{key} = 4`"),
                )
            })?;
            let n = value.base10_parse::<usize>()?;
            match key.to_string().as_str() {
                kw::CONCURRENCY => {
                    if n == 0 {
                        self.errors.spanned(
                            &value,
                            "`concurrency` must be at least 1 (leave it out for no limit)",
                        );
                    }
                    concurrency = n;
                }
                kw::TOLERATE => tolerate = Some(n),
                other => self
                    .errors
                    .spanned(&key, unknown_key("`map` key", other, kw::MAP_KEYS)),
            }
        }
        if !content.is_empty() {
            return Err(content.error("expected `,` and `concurrency = N` or `tolerate = N`"));
        }
        Ok(Unit::Map {
            body,
            concurrency,
            tolerate,
            span: kw_ident.span(),
        })
    }

    /// `signal("approve")` or `signal("approve", timeout = "1h")`.
    fn signal(&mut self, input: ParseStream) -> syn::Result<Unit> {
        let kw_ident: Ident = input.parse()?;
        let content;
        syn::parenthesized!(content in input);
        let name: LitStr = content.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "a signal is named by a string: `signal(\"approve\", timeout = \"1h\")`",
            )
        })?;
        let mut timeout = None;
        while content.parse::<Option<Token![,]>>()?.is_some() {
            if content.is_empty() {
                break;
            }
            let key: Ident = content.parse()?;
            content.parse::<Token![=]>()?;
            let value: Expr = content.parse()?;
            if key == kw::TIMEOUT {
                timeout = self
                    .errors
                    .ok(duration::parse(&value, "a signal's timeout"));
            } else {
                self.errors.spanned(
                    &key,
                    unknown_key("`signal` key", &key.to_string(), &[kw::TIMEOUT]),
                );
            }
        }
        Ok(Unit::Signal {
            name,
            timeout,
            span: kw_ident.span(),
        })
    }

    fn branch(&mut self, input: ParseStream) -> syn::Result<Unit> {
        let kw_ident: Ident = input.parse()?;
        let content;
        syn::parenthesized!(content in input);
        let selector: Expr = content.parse()?;
        if !content.is_empty() {
            return Err(content.error("`branch` takes one selector: `branch(|x| x.kind) { .. }`"));
        }
        let arms_content;
        let brace = syn::braced!(arms_content in input);
        let mut arms = Vec::new();
        while !arms_content.is_empty() {
            let pat = Pat::parse_multi_with_leading_vert(&arms_content)?;
            arms_content.parse::<Token![=>]>()?;
            let p = self.pipeline(&arms_content)?;
            arms.push((pat, p));
            if arms_content.parse::<Option<Token![,]>>()?.is_none() && !arms_content.is_empty() {
                return Err(arms_content.error("expected `,` between branch arms"));
            }
        }
        if arms.is_empty() {
            return Err(syn::Error::new(
                brace.span.join(),
                "a `branch` needs at least one arm: `{ Kind::A => step_a, Kind::B => step_b }`",
            ));
        }
        Ok(Unit::Branch {
            selector,
            arms,
            span: kw_ident.span(),
        })
    }
}

// ---------------------------------------------------------------- plan (node ids, graph)

#[allow(clippy::large_enum_variant)] // built once per expansion
enum PStage {
    Step {
        id: u32,
        recovery: Option<u32>,
        func: Expr,
        policy: Policy,
    },
    Parallel {
        id: u32,
        branches: Vec<Vec<PStage>>,
        settle: bool,
        span: Span,
    },
    Map {
        id: u32,
        body: Vec<PStage>,
        concurrency: usize,
        tolerate: Option<usize>,
        span: Span,
    },
    Branch {
        id: u32,
        selector: Expr,
        arms: Vec<(Pat, Vec<PStage>)>,
        span: Span,
    },
    Signal {
        id: u32,
        name: LitStr,
        timeout: Option<core::time::Duration>,
        span: Span,
    },
}

impl PStage {
    fn id(&self) -> u32 {
        match self {
            PStage::Step { id, .. }
            | PStage::Parallel { id, .. }
            | PStage::Map { id, .. }
            | PStage::Branch { id, .. }
            | PStage::Signal { id, .. } => *id,
        }
    }
}

struct Planner {
    model: Model,
    /// For each stage's node: the name of what produced its input (`None` for the flow's
    /// input), for diagnostics ("the output of step `launch`").
    prev: std::collections::HashMap<u32, Option<String>>,
}

impl Planner {
    /// Numbers the stages of `p` and adds their nodes and edges. `frontier` are the nodes the
    /// first stage follows (edges of kind `entry` labelled `label`); returns the stages and
    /// the nodes the next stage follows.
    fn plan(
        &mut self,
        p: Pipeline,
        parent: Option<u32>,
        states: bool,
        mut frontier: Vec<u32>,
        mut entry: (EdgeKind, String),
        mut prev: Option<String>,
    ) -> (Vec<PStage>, Vec<u32>) {
        let mut out = Vec::new();
        for stage in p.stages {
            let link = |m: &mut Model, id: u32, frontier: &[u32]| {
                for &f in frontier {
                    m.edge(f, id, entry.0, entry.1.clone());
                }
            };
            match stage.unit {
                Unit::Group(inner) => {
                    let (mut inner_stages, f) =
                        self.plan(inner, parent, states, frontier, entry.clone(), prev.clone());
                    if let Some(last) = inner_stages.last() {
                        prev = self
                            .model
                            .nodes
                            .get(last.id() as usize)
                            .map(|n| n.name.clone());
                    }
                    out.append(&mut inner_stages);
                    frontier = f;
                }
                Unit::Step(func, label, callee) => {
                    let name = match (&label, &func) {
                        (Some(l), _) => l.to_string(),
                        (None, Expr::Path(p)) => p
                            .path
                            .segments
                            .last()
                            .map_or_else(|| "step".to_owned(), |s| s.ident.to_string()),
                        (None, other) => other.to_token_stream().to_string(),
                    };
                    let id =
                        self.model
                            .add(&name, Kind::Step, stage.policy.display(), parent, states);
                    self.model.set_call(
                        id,
                        &callee.unwrap_or_else(|| quote::ToTokens::to_token_stream(&func)),
                    );
                    link(&mut self.model, id, &frontier);
                    self.prev.insert(id, prev.replace(name.clone()));
                    frontier = vec![id];
                    let recovery = stage.policy.catch.as_ref().map(|c| {
                        let rname = match &c.recover {
                            Expr::Path(p) => p
                                .path
                                .segments
                                .last()
                                .map_or_else(|| "recover".to_owned(), |s| s.ident.to_string()),
                            _ => "recover".to_owned(),
                        };
                        let r =
                            self.model
                                .add(&rname, Kind::Recovery, String::new(), parent, false);
                        self.model.edge(id, r, EdgeKind::Catch, String::new());
                        frontier.push(r);
                        r
                    });
                    out.push(PStage::Step {
                        id,
                        recovery,
                        func,
                        policy: stage.policy,
                    });
                }
                Unit::Parallel(branches, span) => {
                    let settle = stage.policy.settle;
                    let id = self.model.add(
                        "parallel",
                        Kind::Parallel,
                        if settle {
                            "settle".into()
                        } else {
                            String::new()
                        },
                        parent,
                        states,
                    );
                    link(&mut self.model, id, &frontier);
                    let mut ends = Vec::new();
                    let mut planned = Vec::new();
                    for b in branches {
                        let (s, f) = self.plan(
                            b,
                            Some(id),
                            false,
                            vec![id],
                            (EdgeKind::Parallel, String::new()),
                            prev.clone(),
                        );
                        planned.push(s);
                        ends.extend(f);
                    }
                    frontier = ends;
                    self.prev.insert(id, prev.replace("parallel".to_owned()));
                    out.push(PStage::Parallel {
                        id,
                        branches: planned,
                        settle,
                        span,
                    });
                }
                Unit::Map {
                    body,
                    concurrency,
                    tolerate,
                    span,
                } => {
                    let mut pol = Vec::new();
                    if concurrency > 0 {
                        pol.push(format!("concurrency = {concurrency}"));
                    }
                    if let Some(t) = tolerate {
                        pol.push(format!("tolerate = {t}"));
                    }
                    let id = self
                        .model
                        .add("map", Kind::Map, pol.join(", "), parent, states);
                    link(&mut self.model, id, &frontier);
                    let (s, f) = self.plan(
                        body,
                        Some(id),
                        false,
                        vec![id],
                        (EdgeKind::Map, String::new()),
                        Some("map".to_owned()),
                    );
                    frontier = f;
                    self.prev.insert(id, prev.replace("map".to_owned()));
                    out.push(PStage::Map {
                        id,
                        body: s,
                        concurrency,
                        tolerate,
                        span,
                    });
                }
                Unit::Signal {
                    name,
                    timeout,
                    span,
                } => {
                    let policy = timeout.map_or_else(String::new, |d| {
                        format!("timeout = {}", humantime::format_duration(d))
                    });
                    let id = self
                        .model
                        .add(&name.value(), Kind::Signal, policy, parent, states);
                    self.model.set_call(id, &quote!(signal #name));
                    link(&mut self.model, id, &frontier);
                    self.prev.insert(id, prev.replace(name.value()));
                    frontier = vec![id];
                    out.push(PStage::Signal {
                        id,
                        name,
                        timeout,
                        span,
                    });
                }
                Unit::Branch {
                    selector,
                    arms,
                    span,
                } => {
                    let id = self
                        .model
                        .add("branch", Kind::Branch, String::new(), parent, states);
                    link(&mut self.model, id, &frontier);
                    let mut ends = Vec::new();
                    let mut planned = Vec::new();
                    for (pat, arm) in arms {
                        let label = pat.to_token_stream().to_string().replace(" :: ", "::");
                        let (s, f) = self.plan(
                            arm,
                            parent,
                            states,
                            vec![id],
                            (EdgeKind::Branch, label),
                            prev.clone(),
                        );
                        planned.push((pat, s));
                        ends.extend(f);
                    }
                    frontier = ends;
                    self.prev.insert(id, prev.replace("branch".to_owned()));
                    out.push(PStage::Branch {
                        id,
                        selector,
                        arms: planned,
                        span,
                    });
                }
            }
            entry = (EdgeKind::Sequence, String::new());
        }
        (out, frontier)
    }
}

// ---------------------------------------------------------------- expansion

struct Expander<'a> {
    /// Node names, by id.
    gen_name: Vec<String>,
    prev: &'a std::collections::HashMap<u32, Option<String>>,
    gen_: Gen<'a>,
    krate: &'a TokenStream,
    ctx: &'a Ident,
    v: Ident,
    state: Ident,
    variants: Vec<Option<Ident>>,
}

impl Expander<'_> {
    fn variant(&self, id: u32) -> TokenStream {
        let state = &self.state;
        match self.variants.get(id as usize).and_then(Option::as_ref) {
            Some(v) => quote!(#state::#v),
            None => quote!(#state::Completed),
        }
    }

    fn name_of(&self, id: u32) -> String {
        self.gen_name.get(id as usize).cloned().unwrap_or_default()
    }

    /// An expression, evaluated in the driver's async context, that runs `stage` on `self.v`
    /// and yields its output (errors propagate with `?`).
    fn value(&self, stage: &PStage) -> TokenStream {
        let (krate, ctx, v) = (self.krate, self.ctx, &self.v);
        match stage {
            PStage::Step {
                id,
                recovery,
                func,
                policy,
            } => {
                let span = func.span();
                let name = self.name_of(*id);
                // The step function is named once, so an unknown name is reported once.
                let step_fn = Ident::new("__flow_step_fn", Span::mixed_site().located_at(span));
                let bind = quote_spanned!(span=> let #step_fn = #func;);
                let func = &syn::parse_quote!(#step_fn);
                let call = Call::Input { func, input: v };
                let code = self.gen_.step(*id, &name, *recovery, policy, &call, span);
                // The edge into this step: does the step take the value? Not checked for the
                // flow's first step, whose input type is the step's parameter type.
                // A closure's parameter type is inferred from its call, so it is not probed
                // (rustc reports a mismatch on the closure itself).
                let is_closure = matches!(func, Expr::Path(p) if p.path.get_ident().is_some_and(|i| i.to_string().starts_with("__flow_env")));
                let check = match self.prev.get(id).cloned().flatten() {
                    Some(prev) if !is_closure => {
                        let s_m = self.gen_.markers.path(&name, span);
                        let p_m = self.gen_.markers.path(&prev, span);
                        // The value passes through the check: when it fails, the value has no
                        // type, so the step's call does not report a mismatch as well.
                        let krate_at = respan(krate, span);
                        quote_spanned! {span=>
                            let #v = {
                                #[allow(unused_imports)]
                                use #krate::__private::{TakesNo as _, TakesYes as _};
                                let __flow_check =
                                    (&#krate::__private::probe_edge(&#func, &#v)).flow_takes();
                                #krate_at::__private::edge::<_, #s_m, #p_m, _>(#v, __flow_check)
                            };
                        }
                    }
                    _ => TokenStream::new(),
                };
                quote_spanned!(span=> { #bind #check #code? })
            }
            PStage::Parallel {
                id,
                branches,
                settle,
                span,
            } => {
                let n = branches.len();
                let futs: Vec<TokenStream> = branches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let input = if i + 1 < n {
                            let prev = self.prev.get(id).cloned().flatten();
                            let m = self
                                .gen_
                                .markers
                                .path(prev.as_deref().unwrap_or("start"), *span);
                            quote_spanned! {*span=> {
                                #[allow(unused_imports)]
                                use #krate::__private::{CloneNo as _, CloneYes as _};
                                #krate::__private::branch_input::<#m, _, _>(
                                    &#v,
                                    (&#krate::__private::Probe(&#v, ::core::marker::PhantomData::<()>)).flow_clone(),
                                )
                            }}
                        } else {
                            quote!(#v)
                        };
                        self.inline(b, input)
                    })
                    .collect();
                let joined = nest_join(krate, &futs, *settle);
                let names: Vec<Ident> = (0..n)
                    .map(|i| format_ident!("__flow_b{}", i, span = Span::mixed_site()))
                    .collect();
                let pattern = nest_pattern(&names);
                let idt = quote!(#krate::NodeId(#id));
                if *settle {
                    quote!({ #ctx.enter(#idt); let #pattern = #joined.await; (#(#names),*) })
                } else {
                    quote!({ #ctx.enter(#idt); let #pattern = #joined.await?; (#(#names),*) })
                }
            }
            PStage::Map {
                id,
                body,
                concurrency,
                tolerate,
                span,
            } => {
                let item = format_ident!("__flow_item", span = Span::mixed_site());
                let body = self.inline(body, quote!(#item));
                let idt = quote!(#krate::NodeId(#id));
                let prev = self.prev.get(id).cloned().flatten();
                let m = self
                    .gen_
                    .markers
                    .path(prev.as_deref().unwrap_or("start"), *span);
                // The items pass through the check, so a failed check is the only error.
                let krate_at = respan(krate, *span);
                let items = quote_spanned! {*span=> {
                    #[allow(unused_imports)]
                    use #krate::__private::{IterNo as _, IterYes as _};
                    let __flow_check =
                        (&#krate::__private::Probe(&#v, ::core::marker::PhantomData::<()>)).flow_iter();
                    #krate_at::__private::map_input::<#m, _, _>(#v, __flow_check)
                }};
                match tolerate {
                    None => {
                        quote_spanned!(*span=> #ctx.map(#idt, #items, #concurrency, |#item| #body).await?)
                    }
                    Some(t) => {
                        quote_spanned!(*span=> #ctx.map_tolerant(#idt, #items, #concurrency, #t, |#item| #body).await?)
                    }
                }
            }
            PStage::Signal {
                id,
                name,
                timeout,
                span,
            } => {
                let idt = quote!(#krate::NodeId(#id));
                let timeout = match timeout {
                    Some(d) => {
                        let d = duration::to_tokens(*d);
                        quote!(::core::option::Option::Some(#d))
                    }
                    None => quote!(::core::option::Option::None),
                };
                let input = Ident::new("__flow_in", Span::mixed_site());
                let wait = if self.gen_.durable {
                    Ident::new("durable_signal", *span)
                } else {
                    Ident::new("signal", *span)
                };
                quote_spanned!(*span=> {
                    let #input = #v;
                    (#input, #ctx.#wait::<_>(#idt, #name, #timeout).await?)
                })
            }
            PStage::Branch {
                id,
                selector,
                arms,
                span,
            } => {
                let idt = quote!(#krate::NodeId(#id));
                let arms = arms.iter().map(|(pat, stages)| {
                    let body = self.inline(stages, quote!(#v));
                    quote!(#pat => #body.await?)
                });
                {
                    // The scrutinee carries the selector's span: a `match` that misses a case
                    // is reported on the user's selector.
                    let sel =
                        Ident::new("__flow_sel", Span::mixed_site().located_at(selector.span()));
                    // The `match` itself is the macro's (no user span): rustc then has no place
                    // in the user's code to suggest a missing arm in Rust syntax, which would
                    // not be valid `flow!`.
                    let matched = quote_spanned!(Span::mixed_site()=> match #sel { #(#arms,)* });
                    quote_spanned!(*span=> { #ctx.enter(#idt); let #sel = #krate::__private::select(&#v, #selector); #matched })
                }
            }
        }
    }

    /// A future (an async block) that runs `stages` on `input` and yields
    /// `Result<T, StepError<E>>`.
    fn inline(&self, stages: &[PStage], input: TokenStream) -> TokenStream {
        let (krate, ctx, v) = (self.krate, self.ctx, &self.v);
        let steps = stages.iter().map(|s| {
            let value = self.value(s);
            quote!(let #v = #value;)
        });
        quote!({
            let #ctx = #ctx.by_ref();
            let #v = #input;
            async move {
                #(#steps)*
                ::core::result::Result::<_, #krate::StepError<_>>::Ok(#v)
            }
        })
    }

    /// The match arms of the state machine for `stages` (top level or a branch arm); the last
    /// stage moves to `next`.
    fn arms(&self, stages: &[PStage], next: &TokenStream, out: &mut Vec<TokenStream>) {
        let v = &self.v;
        for (i, stage) in stages.iter().enumerate() {
            let this = self.variant(stage.id());
            let next_i = match stages.get(i + 1) {
                Some(s) => self.variant(s.id()),
                None => next.clone(),
            };
            match stage {
                PStage::Branch {
                    id,
                    selector,
                    arms,
                    span,
                } => {
                    let (krate, ctx) = (self.krate, self.ctx);
                    let idt = quote!(#krate::NodeId(#id));
                    let targets = arms.iter().map(|(pat, s)| {
                        let first = s
                            .first()
                            .map_or_else(|| next_i.clone(), |f| self.variant(f.id()));
                        quote!(#pat => #first(#v))
                    });
                    let sel =
                        Ident::new("__flow_sel", Span::mixed_site().located_at(selector.span()));
                    let matched = quote_spanned!(Span::mixed_site()=> match #sel { #(#targets,)* });
                    out.push(quote_spanned!(*span=> #this(#v) => { #ctx.enter(#idt); let #sel = #krate::__private::select(&#v, #selector); #matched }));
                    for (_, s) in arms {
                        self.arms(s, &next_i, out);
                    }
                }
                other => {
                    let value = self.value(other);
                    out.push(quote!(#this(#v) => #next_i(#value)));
                }
            }
        }
    }
}

fn nest_join(krate: &TokenStream, futs: &[TokenStream], settle: bool) -> TokenStream {
    let f = if settle {
        quote!(#krate::__private::join)
    } else {
        quote!(#krate::__private::try_join)
    };
    match futs {
        [] => quote!(()),
        [one] => one.clone(),
        [first, rest @ ..] => {
            let rest = nest_join(krate, rest, settle);
            quote!(#f(#first, #rest))
        }
    }
}

fn nest_pattern(names: &[Ident]) -> TokenStream {
    match names {
        [] => quote!(()),
        [one] => quote!(#one),
        [first, rest @ ..] => {
            let rest = nest_pattern(rest);
            quote!((#first, #rest))
        }
    }
}

/// `flow!` as users call it: the runtime is `::flow` unless a `crate = ".."` option says
/// otherwise.
pub(crate) fn expand_direct(input: TokenStream) -> TokenStream {
    let mut all = quote!(::flow;);
    all.extend(input);
    expand(all)
}

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let parsed = {
        let mut p = Parser {
            errors: &mut errors,
            labels: Vec::new(),
            names: Vec::new(),
            env: Vec::new(),
            pending_policy: None,
        };
        let r = syn::parse::Parser::parse2(|s: ParseStream| p.input(s), input);
        if r.is_ok() {
            p.check_labels();
        }
        r
    };
    // `flow!` is an expression: several `compile_error!`s must sit in a block.
    let flow = match parsed {
        Ok(f) => f,
        Err(e) => {
            errors.push(e);
            let errs = errors.into_compile_errors();
            return quote!({ #errs });
        }
    };
    if !errors.is_empty() {
        let errs = errors.into_compile_errors();
        return quote!({ #errs });
    }
    expand_flow(flow)
}

fn expand_flow(flow: FlowInput) -> TokenStream {
    let krate = &flow.krate;
    if let (Some(at), None) = (flow.durable, &flow.name) {
        return syn::Error::new(
            at,
            "a durable flow needs a name, which its stored runs carry (a restarted process finds their workflow by it): `flow! { name = \"provision\", durable; .. }`",
        )
        .into_compile_error();
    }
    let name = flow
        .name
        .as_ref()
        .map_or_else(|| "flow".to_owned(), LitStr::value);
    let mut planner = Planner {
        model: Model::new(name),
        prev: std::collections::HashMap::new(),
    };
    let (stages, frontier) = planner.plan(
        flow.pipeline,
        None,
        true,
        vec![crate::model::START],
        (EdgeKind::Sequence, String::new()),
        None,
    );
    planner
        .model
        .edges_from(&frontier, crate::model::END, EdgeKind::Sequence);
    let mut model = planner.model;
    let planner_prev = planner.prev;
    model.name_variants();

    let ctx = Ident::new("__flow_ctx", Span::mixed_site());
    let state = Ident::new("__FlowState", Span::mixed_site());
    let v = Ident::new("__flow_v", Span::mixed_site());
    let s = Ident::new("__flow_s", Span::mixed_site());
    let variants: Vec<Option<Ident>> = model.nodes.iter().map(|n| n.variant.clone()).collect();
    let error_tokens = flow.error.as_ref().map(ToTokens::to_token_stream);
    let markers = Markers::new(Ident::new("__flow_steps", Span::call_site()));
    let ex = Expander {
        gen_name: model.nodes.iter().map(|n| n.name.clone()).collect(),
        prev: &planner_prev,
        gen_: Gen {
            krate,
            ctx: &ctx,
            exact: flow.error.is_none(),
            marker: false,
            error_ty: error_tokens.as_ref(),
            markers: &markers,
            durable: flow.durable.is_some(),
        },
        krate,
        ctx: &ctx,
        v: v.clone(),
        state: state.clone(),
        variants,
    };
    let completed = quote!(#state::Completed);
    let mut arms = Vec::new();
    let first = stages
        .first()
        .map_or_else(|| completed.clone(), |f| ex.variant(f.id()));
    arms.push(quote!(#state::Start(#v) => #first(#v)));
    ex.arms(&stages, &completed, &mut arms);

    let state_variants: Vec<(u32, &Ident)> = model.state_variants().collect();
    let params: Vec<Ident> = (0..=state_variants.len())
        .map(|i| format_ident!("__T{}", i, span = Span::mixed_site()))
        .collect();
    let (last_param, variant_params) = match params.split_last() {
        Some((l, rest)) => (l.clone(), rest.to_vec()),
        None => return quote!(compile_error!("internal: no state parameters")),
    };
    let variant_defs = state_variants
        .iter()
        .zip(&variant_params)
        .map(|((_, v), p)| quote!(#v(#p)));
    let node_arms = state_variants
        .iter()
        .map(|(i, v)| quote!(#state::#v(_) => #krate::NodeId(#i)));
    let graph = model.graph_tokens(krate);
    let timeout = match flow.timeout {
        Some(d) => {
            let d = duration::to_tokens(d);
            quote!(::core::option::Option::Some(#d))
        }
        None => quote!(::core::option::Option::None),
    };
    let err_ty = match &flow.error {
        Some(t) => quote!(#t),
        None => quote!(_),
    };
    let marker_defs = markers.definitions();
    let mut undo_builder = flow.undo.builder_calls();
    // `durable`: the flow's input, output and error must be storable, checked where
    // `durable` is written; its steps were generated to commit their outcomes.
    // `durable`: the flow is bound, its values' types checked, then returned.
    let (mut let_f, mut checked) = (TokenStream::new(), TokenStream::new());
    if let Some(at) = flow.durable {
        undo_builder.extend(quote_spanned!(at=> .durable()));
        let f = Ident::new("__flow_f", Span::mixed_site());
        checked = quote_spanned! {at=>
            {
                #[allow(unused_imports)]
                use #krate::__private::{FlowStoredNo as _, FlowStoredYes as _};
                let (__flow_i, __flow_o, __flow_e) = #f.stored_values();
                #krate::__private::stored_input(&__flow_i, (&__flow_i).flow_value_stored());
                #krate::__private::stored_result(&__flow_o, (&__flow_o).flow_value_stored());
                #krate::__private::stored_error(&__flow_e, (&__flow_e).flow_value_stored());
            }
        };
        checked = quote!(; #checked #f);
        let_f = quote!(let #f =);
    }
    // Closure and method stages: built once with the flow, shared by its runs through an
    // `Arc` (a run's future owns a clone and calls them by reference). Nothing for a flow of
    // plain steps.
    let env = Ident::new("__flow_env", Span::mixed_site());
    let (env_def, env_clone, env_bind) = if flow.env.is_empty() {
        (TokenStream::new(), TokenStream::new(), TokenStream::new())
    } else {
        let names = flow.env.iter().map(|(i, _)| i);
        let values = flow.env.iter().map(|(_, t)| t);
        (
            quote!(let #env = ::std::sync::Arc::new((#(#values,)*));),
            quote!(let #env = ::std::sync::Arc::clone(&#env);),
            quote!(let (#(#names,)*) = &*#env;),
        )
    };
    quote! {{
        #marker_defs
        #[allow(non_camel_case_types, dead_code, clippy::enum_variant_names, clippy::large_enum_variant)]
        enum #state<#(#params),*> {
            #(#variant_defs,)*
            Completed(#last_param),
            Failed,
            Cancelled,
        }
        #[automatically_derived]
        impl<#(#params),*> #krate::WorkflowState for #state<#(#params),*> {
            fn node(&self) -> #krate::NodeId {
                match self {
                    #(#node_arms,)*
                    #state::Completed(_) | #state::Failed | #state::Cancelled => #krate::NodeId::END,
                }
            }
        }
        #env_def
        #let_f #krate::Flow::new(#graph, #state::Start, #timeout, move |#ctx: #krate::__private::Ctx<#err_ty>, #s| {
          #env_clone
          async move {
            #env_bind
            let mut #s = #s;
            #[allow(unreachable_code, clippy::never_loop)]
            loop {
                #s = match #s {
                    #(#arms,)*
                    #state::Completed(#v) => return ::core::result::Result::Ok(#v),
                    #state::Failed | #state::Cancelled => {
                        return ::core::result::Result::Err(#krate::Error::new(
                            "", #krate::ErrorKind::Cancelled { step: ::core::option::Option::None },
                        ));
                    }
                };
            }
          }
        }) #undo_builder #checked
    }}
}
