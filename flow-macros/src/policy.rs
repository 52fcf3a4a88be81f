//! Step policies: parsed from `#[retry(...)]`-style attributes (`#[workflow]`) or from a
//! `[retry(...), timeout = "2s"]` list (`flow!`) into one model, validated, and turned into
//! `flow::StepPolicy` tokens.
//!
//! Grammar of one policy item (both front ends):
//!
//! ```text
//! item    := ident                      // settle
//!          | ident '(' args ')'         // retry(max_attempts = 3), timeout("2s"), catch(f, when = p)
//!          | ident '=' expr             // timeout = "2s", compensate = undo
//! retry   := key '=' value (',' key '=' value)*
//! ```

use core::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, Token};

use crate::errors::{Errors, unknown_key};
use crate::{duration, kw};

/// One `key = value` pair.
pub(crate) struct KeyValue {
    pub(crate) key: Ident,
    pub(crate) value: Expr,
}

impl Parse for KeyValue {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        Ok(KeyValue { key, value })
    }
}

/// One policy item as written.
pub(crate) struct Item {
    pub(crate) name: Ident,
    pub(crate) args: ItemArgs,
}

pub(crate) enum ItemArgs {
    None,
    List(TokenStream, Span),
    Value(Expr),
}

impl Parse for Item {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        let args = if input.peek(syn::token::Paren) {
            let content;
            let paren = syn::parenthesized!(content in input);
            ItemArgs::List(content.parse()?, paren.span.join())
        } else if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            ItemArgs::Value(input.parse()?)
        } else {
            ItemArgs::None
        };
        Ok(Item { name, args })
    }
}

/// Which failures a retry rule covers.
pub(crate) enum On {
    Any,
    Errors,
    Timeouts,
    When(Expr),
}

pub(crate) enum BackoffSpec {
    None,
    Constant(Duration),
    Exponential(Duration, f64),
}

pub(crate) struct RetryRule {
    max_attempts: u32,
    backoff: BackoffSpec,
    max_delay: Option<Duration>,
    jitter: &'static str,
    max_elapsed: Option<Duration>,
    on: On,
}

pub(crate) struct Catch {
    pub(crate) recover: Expr,
    /// `when = pred`: a predicate over the step's own error `&E` (as retry's `when`).
    pub(crate) when: Option<Expr>,
    /// `on = any | errors | timeouts | panics`.
    pub(crate) on: Option<&'static str>,
}

/// The policies of one step (or one parallel group: only `settle`).
#[derive(Default)]
pub(crate) struct Policy {
    pub(crate) retry: Vec<RetryRule>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) compensate: Option<Expr>,
    /// `compensate(undo, timeout = "10s", retry(..))`: the undo's own limits.
    pub(crate) undo_timeout: Option<Duration>,
    pub(crate) undo_retry: Vec<RetryRule>,
    pub(crate) catch: Option<Catch>,
    pub(crate) settle: bool,
    /// Span of the first policy item, for errors about the policy as a whole.
    pub(crate) span: Option<Span>,
}

impl Policy {
    pub(crate) fn is_empty(&self) -> bool {
        self.retry.is_empty()
            && self.timeout.is_none()
            && self.compensate.is_none()
            && self.catch.is_none()
            && !self.settle
    }

    /// Adds one item; errors are recorded, never thrown.
    pub(crate) fn add(&mut self, item: Item, allowed: &[&str], errors: &mut Errors) {
        let name = item.name.to_string();
        if self.span.is_none() {
            self.span = Some(item.name.span());
        }
        if !allowed.contains(&name.as_str()) {
            errors.spanned(&item.name, unknown_key("policy", &name, allowed));
            return;
        }
        match name.as_str() {
            kw::RETRY => match item.args {
                ItemArgs::List(tokens, span) => {
                    let parsed = parse_retry(tokens, span, errors);
                    if let Some(rule) = errors.ok(parsed) {
                        self.retry.push(rule);
                    }
                }
                _ => errors.spanned(
                    &item.name,
                    "`retry` takes a list: `retry(max_attempts = 3, backoff = exponential(\"200ms\", 2.0))`",
                ),
            },
            kw::TIMEOUT => {
                if self.timeout.is_some() {
                    errors.spanned(&item.name, "a step has at most one `timeout`");
                }
                let expr = match item.args {
                    ItemArgs::Value(e) => Some(e),
                    ItemArgs::List(t, _) => errors.ok(syn::parse2::<Expr>(t)),
                    ItemArgs::None => {
                        errors.spanned(&item.name, "`timeout` needs a duration: `timeout = \"2s\"`");
                        None
                    }
                };
                if let Some(e) = expr {
                    self.timeout = errors.ok(duration::parse(&e, "timeout"));
                }
            }
            kw::COMPENSATE => {
                if self.compensate.is_some() {
                    errors.spanned(&item.name, "a step has at most one `compensate`");
                }
                match item.args {
                    ItemArgs::Value(e) => self.compensate = Some(e),
                    ItemArgs::List(t, span) => {
                        if let Some(args) = errors.ok(syn::parse2::<CompensateArgs>(t)) {
                            self.compensate = Some(args.undo);
                            for item in args.items {
                                self.add_undo_limit(item, span, errors);
                            }
                        }
                    }
                    ItemArgs::None => errors.spanned(
                        &item.name,
                        "`compensate` needs the function that undoes the step: `compensate = undo`",
                    ),
                }
            }
            kw::CATCH => {
                if self.catch.is_some() {
                    errors.spanned(&item.name, "a step has at most one `catch`");
                }
                let parsed = match item.args {
                    ItemArgs::List(t, _) => errors.ok(syn::parse2::<CatchArgs>(t)),
                    ItemArgs::Value(e) => Some(CatchArgs {
                        recover: e,
                        when: None,
                        on: None,
                    }),
                    ItemArgs::None => {
                        errors.spanned(&item.name, "`catch` needs a recovery step: `catch(recover)` or `catch(recover, when = is_transient)`");
                        None
                    }
                };
                if let Some(c) = parsed {
                    self.catch = Some(Catch {
                        recover: c.recover,
                        when: c.when,
                        on: c.on,
                    });
                }
            }
            kw::SETTLE => match item.args {
                ItemArgs::None => self.settle = true,
                _ => errors.spanned(&item.name, "`settle` takes no arguments"),
            },
            _ => errors.spanned(&item.name, unknown_key("policy", &name, allowed)),
        }
    }

    /// One of `compensate(undo, ..)`'s limits: `timeout = "10s"` or `retry(..)`.
    fn add_undo_limit(&mut self, item: Item, span: Span, errors: &mut Errors) {
        const UNDO_KEYS: &[&str] = &[kw::TIMEOUT, kw::RETRY];
        match (item.name.to_string().as_str(), item.args) {
            (kw::TIMEOUT, ItemArgs::Value(e)) => {
                self.undo_timeout = errors.ok(duration::parse(&e, "the compensation's timeout"));
            }
            (kw::RETRY, ItemArgs::List(tokens, span)) => {
                let parsed = parse_retry(tokens, span, errors);
                if let Some(rule) = errors.ok(parsed) {
                    self.undo_retry.push(rule);
                }
            }
            (kw::TIMEOUT | kw::RETRY, _) => errors.spanned(
                &item.name,
                "write the undo's limits as `compensate(undo, timeout = \"10s\", retry(max_attempts = 3))`",
            ),
            (other, _) => {
                let _ = span;
                errors.spanned(&item.name, unknown_key("`compensate` key", other, UNDO_KEYS));
            }
        }
    }

    /// Human-readable text for the graph, built from the parsed values so that formatting and
    /// comments do not change it.
    pub(crate) fn display(&self) -> String {
        let mut parts: Vec<String> = self.retry.iter().map(retry_text).collect();
        if let Some(d) = self.timeout {
            parts.push(format!("timeout = {}", fmt_dur(d)));
        }
        if let Some(c) = &self.compensate {
            let mut limits = Vec::new();
            if let Some(d) = self.undo_timeout {
                limits.push(format!("timeout = {}", fmt_dur(d)));
            }
            limits.extend(self.undo_retry.iter().map(retry_text));
            if limits.is_empty() {
                parts.push(format!("compensate = {}", c.to_token_stream()));
            } else {
                parts.push(format!(
                    "compensate({}, {})",
                    c.to_token_stream(),
                    limits.join(", ")
                ));
            }
        }
        if let Some(c) = &self.catch {
            parts.push(format!("catch({})", c.recover.to_token_stream()));
        }
        if self.settle {
            parts.push("settle".into());
        }
        parts.join(", ")
    }

    /// `flow::CompensationPolicy { .. }` tokens, when the undo has limits of its own.
    pub(crate) fn to_undo_policy(&self, krate: &TokenStream) -> Option<TokenStream> {
        if self.undo_timeout.is_none() && self.undo_retry.is_empty() {
            return None;
        }
        let rules = self.undo_retry.iter().map(|r| r.to_tokens(krate));
        let timeout = match self.undo_timeout {
            Some(d) => {
                let d = duration::to_tokens(d);
                quote!(::core::option::Option::Some(#d))
            }
            None => quote!(::core::option::Option::None),
        };
        Some(quote! {
            #krate::__private::CompensationPolicy { retry: &[#(#rules),*], timeout: #timeout }
        })
    }

    /// `flow::StepPolicy { .. }` tokens.
    /// The retry rules alone, as a slice (`&[Retry::new(3), ..]`).
    pub(crate) fn to_retry_rules(&self, krate: &TokenStream) -> TokenStream {
        let rules = self.retry.iter().map(|r| r.to_tokens(krate));
        quote!(&[#(#rules),*])
    }

    pub(crate) fn to_step_policy(&self, krate: &TokenStream) -> TokenStream {
        let rules = self.to_retry_rules(krate);
        let timeout = match self.timeout {
            Some(d) => {
                let d = duration::to_tokens(d);
                quote!(::core::option::Option::Some(#d))
            }
            None => quote!(::core::option::Option::None),
        };
        quote! {
            #krate::__private::StepPolicy { retry: #rules, timeout: #timeout }
        }
    }
}

/// `retry(max_attempts = 3, backoff = ..)`, from the parsed rule (formatting-independent).
fn retry_text(r: &RetryRule) -> String {
    let mut args = vec![format!("max_attempts = {}", r.max_attempts)];
    match r.backoff {
        BackoffSpec::None => {}
        BackoffSpec::Constant(d) => args.push(format!("backoff = constant({})", fmt_dur(d))),
        BackoffSpec::Exponential(d, f) => {
            args.push(format!("backoff = exponential({}, {f})", fmt_dur(d)));
        }
    }
    if let Some(d) = r.max_delay {
        args.push(format!("max_delay = {}", fmt_dur(d)));
    }
    if r.jitter != kw::NONE {
        args.push(format!("jitter = {}", r.jitter));
    }
    if let Some(d) = r.max_elapsed {
        args.push(format!("max_elapsed = {}", fmt_dur(d)));
    }
    match &r.on {
        On::Any => {}
        On::Errors => args.push("on = errors".into()),
        On::Timeouts => args.push("on = timeouts".into()),
        On::When(e) => args.push(format!("when = {}", e.to_token_stream())),
    }
    format!("retry({})", args.join(", "))
}

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `compensate(undo, timeout = "10s", retry(max_attempts = 3))`.
struct CompensateArgs {
    undo: Expr,
    items: Vec<Item>,
}

impl Parse for CompensateArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let undo: Expr = input.parse()?;
        let mut items = Vec::new();
        while input.parse::<Option<Token![,]>>()?.is_some() {
            if input.is_empty() {
                break;
            }
            items.push(input.parse()?);
        }
        Ok(CompensateArgs { undo, items })
    }
}

struct CatchArgs {
    recover: Expr,
    when: Option<Expr>,
    on: Option<&'static str>,
}

impl Parse for CatchArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let recover: Expr = input.parse()?;
        let mut when = None;
        let mut on = None;
        while input.parse::<Option<Token![,]>>()?.is_some() && !input.is_empty() {
            let kv: KeyValue = input.parse()?;
            if kv.key == kw::WHEN && when.is_none() {
                when = Some(kv.value);
            } else if kv.key == kw::ON && on.is_none() {
                on = Some(choice(&kv.value, "`on` value", kw::CATCH_ON_KINDS)?);
            } else if kv.key == kw::WHEN || kv.key == kw::ON {
                return Err(syn::Error::new_spanned(
                    &kv.key,
                    format!("`{}` is given twice", kv.key),
                ));
            } else {
                return Err(syn::Error::new_spanned(
                    &kv.key,
                    unknown_key("catch key", &kv.key.to_string(), &[kw::WHEN, kw::ON]),
                ));
            }
            if when.is_some() && on.is_some() {
                return Err(syn::Error::new_spanned(
                    &kv.key,
                    "give either `on` or `when`, not both (`when` catches the step's errors its predicate accepts)",
                ));
            }
        }
        Ok(CatchArgs { recover, when, on })
    }
}

fn parse_retry(tokens: TokenStream, span: Span, errors: &mut Errors) -> syn::Result<RetryRule> {
    let pairs =
        syn::parse::Parser::parse2(Punctuated::<KeyValue, Token![,]>::parse_terminated, tokens)?;
    let mut rule = RetryRule {
        max_attempts: 0,
        backoff: BackoffSpec::None,
        max_delay: None,
        jitter: kw::NONE,
        max_elapsed: None,
        on: On::Any,
    };
    let mut seen: Vec<String> = Vec::new();
    let mut has_max_attempts = false;
    let errors_before = errors.len();
    for kv in pairs {
        let key = kv.key.to_string();
        if seen.contains(&key) {
            errors.spanned(&kv.key, format!("`{key}` is given twice"));
            continue;
        }
        seen.push(key.clone());
        match key.as_str() {
            kw::MAX_ATTEMPTS => {
                has_max_attempts = true;
                if let Some(n) = errors.ok(int(&kv.value, kw::MAX_ATTEMPTS)) {
                    if n == 0 {
                        errors.spanned(
                            &kv.value,
                            "`max_attempts` counts every attempt, the first included, so it must be at least 1",
                        );
                    }
                    rule.max_attempts = u32::try_from(n).unwrap_or(u32::MAX);
                }
            }
            kw::BACKOFF => {
                if let Some(b) = errors.ok(parse_backoff(&kv.value)) {
                    rule.backoff = b;
                }
            }
            kw::MAX_DELAY => rule.max_delay = errors.ok(duration::parse(&kv.value, kw::MAX_DELAY)),
            kw::MAX_ELAPSED => {
                rule.max_elapsed = errors.ok(duration::parse(&kv.value, kw::MAX_ELAPSED));
            }
            kw::JITTER => {
                if let Some(j) = errors.ok(choice(&kv.value, "jitter", kw::JITTER_KINDS)) {
                    rule.jitter = j;
                }
            }
            kw::ON => {
                if let Some(o) = errors.ok(choice(&kv.value, "`on` value", kw::ON_KINDS)) {
                    rule.on = match o {
                        kw::ERRORS => On::Errors,
                        kw::TIMEOUTS => On::Timeouts,
                        _ => On::Any,
                    };
                }
            }
            kw::WHEN => rule.on = On::When(kv.value),
            _ => errors.spanned(&kv.key, unknown_key("retry key", &key, kw::RETRY_KEYS)),
        }
    }
    if seen.iter().any(|k| k == kw::ON) && seen.iter().any(|k| k == kw::WHEN) {
        errors.at(span, "give either `on` or `when`, not both");
    }
    // After an unknown key (likely a misspelt `max_attempts`) the missing key is not news.
    if !has_max_attempts && errors.len() == errors_before {
        return Err(syn::Error::new(
            span,
            "`retry` needs `max_attempts` (every attempt counts, the first included): `retry(max_attempts = 3)`",
        ));
    }
    Ok(rule)
}

fn int(e: &Expr, what: &str) -> syn::Result<u64> {
    if let Expr::Lit(l) = e
        && let Lit::Int(i) = &l.lit
    {
        return i.base10_parse::<u64>();
    }
    Err(syn::Error::new_spanned(
        e,
        format!("`{what}` must be a whole number"),
    ))
}

fn float(e: &Expr) -> syn::Result<f64> {
    if let Expr::Lit(l) = e {
        match &l.lit {
            Lit::Float(f) => return f.base10_parse::<f64>(),
            Lit::Int(i) => return i.base10_parse::<f64>(),
            _ => {}
        }
    }
    Err(syn::Error::new_spanned(
        e,
        "the backoff factor must be a number such as `2.0`",
    ))
}

/// An identifier out of a fixed set (`full`, `equal`, `none`).
fn choice(e: &Expr, what: &str, valid: &[&'static str]) -> syn::Result<&'static str> {
    let name = match e {
        Expr::Path(p) => p.path.get_ident().map(Ident::to_string),
        _ => None,
    };
    let Some(name) = name else {
        return Err(syn::Error::new_spanned(
            e,
            format!("expected a {what}: one of {}", valid.join(", ")),
        ));
    };
    valid
        .iter()
        .find(|v| **v == name)
        .copied()
        .ok_or_else(|| syn::Error::new_spanned(e, unknown_key(what, &name, valid)))
}

fn parse_backoff(e: &Expr) -> syn::Result<BackoffSpec> {
    if let Expr::Path(p) = e
        && p.path.is_ident(kw::NONE)
    {
        return Ok(BackoffSpec::None);
    }
    let Expr::Call(call) = e else {
        return Err(syn::Error::new_spanned(
            e,
            "expected a backoff: `exponential(\"200ms\", 2.0)`, `constant(\"1s\")` or `none`",
        ));
    };
    let name = match &*call.func {
        Expr::Path(p) => p.path.get_ident().map(Ident::to_string).unwrap_or_default(),
        _ => String::new(),
    };
    let args: Vec<&Expr> = call.args.iter().collect();
    match name.as_str() {
        kw::EXPONENTIAL => {
            let [initial, factor] = args.as_slice() else {
                return Err(syn::Error::new(
                    call.paren_token.span.join(),
                    "`exponential` takes the first delay and the factor: `exponential(\"200ms\", 2.0)`",
                ));
            };
            let initial = duration::parse(initial, "the first delay")?;
            let f = float(factor)?;
            if f.is_nan() || f < 1.0 || !f.is_finite() {
                return Err(syn::Error::new_spanned(
                    factor,
                    format!(
                        "the backoff factor must be at least 1.0 (delays never shrink), not {f}"
                    ),
                ));
            }
            Ok(BackoffSpec::Exponential(initial, f))
        }
        kw::CONSTANT => {
            let [delay] = args.as_slice() else {
                return Err(syn::Error::new(
                    call.paren_token.span.join(),
                    "`constant` takes one delay: `constant(\"1s\")`",
                ));
            };
            Ok(BackoffSpec::Constant(duration::parse(delay, "the delay")?))
        }
        _ => Err(syn::Error::new_spanned(
            &call.func,
            unknown_key("backoff", &name, kw::BACKOFF_KINDS),
        )),
    }
}

impl RetryRule {
    fn to_tokens(&self, krate: &TokenStream) -> TokenStream {
        let n = self.max_attempts;
        let mut backoff = match self.backoff {
            BackoffSpec::None => quote!(#krate::policy::Backoff::NONE),
            BackoffSpec::Constant(d) => {
                let d = duration::to_tokens(d);
                quote!(#krate::policy::Backoff::constant(#d))
            }
            BackoffSpec::Exponential(d, f) => {
                let d = duration::to_tokens(d);
                quote!(#krate::policy::Backoff::exponential(#d, #f))
            }
        };
        if let Some(m) = self.max_delay {
            let m = duration::to_tokens(m);
            backoff = quote!(#backoff.with_max_delay(#m));
        }
        let jitter = match self.jitter {
            kw::FULL => quote!(#krate::policy::Jitter::Full),
            kw::EQUAL => quote!(#krate::policy::Jitter::Equal),
            _ => quote!(#krate::policy::Jitter::None),
        };
        let mut rule =
            quote!(#krate::policy::Retry::new(#n).with_backoff(#backoff).with_jitter(#jitter));
        if let Some(b) = self.max_elapsed {
            let b = duration::to_tokens(b);
            rule = quote!(#rule.with_max_elapsed(#b));
        }
        match &self.on {
            On::Any => {}
            On::Errors => rule = quote!(#rule.on(#krate::policy::On::Errors)),
            On::Timeouts => rule = quote!(#rule.on(#krate::policy::On::Timeouts)),
            On::When(pred) => {
                let span = pred.span();
                rule = quote_spanned!(span=> #rule.when(#pred));
            }
        }
        rule
    }
}
