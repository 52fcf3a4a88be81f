//! Control flow in a `#[workflow]` body: what the graph needs to know about `if`, `match`,
//! loops and exits, and the text their edges are labelled with.
//!
//! The walk itself lives in `workflow.rs` (it rewrites the steps as it goes); this module holds
//! the pieces it uses: the pending edges of the frontier, a scan that tells whether a construct
//! contains a step (a construct without one draws no node), the detection of steps hidden in
//! other macros, and a formatting-independent printer for conditions and patterns.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::visit::Visit;
use syn::{Expr, Macro};

use crate::model::EdgeKind;

/// An edge waiting for the next node: from `from`, of `kind`, labelled `label` (a branch arm's
/// condition or pattern, `else`, or a loop's `done`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) from: u32,
    pub(crate) kind: EdgeKind,
    pub(crate) label: String,
}

impl Pending {
    pub(crate) fn plain(from: u32) -> Self {
        Pending {
            from,
            kind: EdgeKind::Sequence,
            label: String::new(),
        }
    }
}

/// Keeps the first of equal pending edges (two arms that both fall through without a step
/// leave the same edge twice).
pub(crate) fn dedup(v: Vec<Pending>) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::with_capacity(v.len());
    for p in v {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// What a `break` or `continue` refers to: the innermost loop, or the one with this label.
pub(crate) struct LoopFrame {
    pub(crate) label: Option<String>,
    pub(crate) breaks: Vec<Pending>,
    pub(crate) continues: Vec<Pending>,
}

/// Whether `e` contains a step of this workflow: an awaited call or an awaited
/// `flow::join!` / `settle!` / `map!` outside closures, async blocks and nested items.
pub(crate) fn expr_has_step(e: &Expr) -> bool {
    let mut s = Scan { found: false };
    s.visit_expr(e);
    s.found
}

/// As [`expr_has_step`], for a block.
pub(crate) fn block_has_step(b: &syn::Block) -> bool {
    let mut s = Scan { found: false };
    s.visit_block(b);
    s.found
}

/// The scanner behind [`expr_has_step`].
pub(crate) struct Scan {
    found: bool,
}

impl<'ast> Visit<'ast> for Scan {
    fn visit_expr(&mut self, e: &'ast Expr) {
        if self.found {
            return;
        }
        if let Expr::Await(aw) = e
            && is_step_base(&aw.base)
        {
            self.found = true;
            return;
        }
        syn::visit::visit_expr(self, e);
    }
    fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
    fn visit_expr_async(&mut self, _: &'ast syn::ExprAsync) {}
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// Whether an awaited expression is a step: a call, a method call, or one of flow's group
/// macros.
pub(crate) fn is_step_base(base: &Expr) -> bool {
    match base {
        Expr::Call(_) | Expr::MethodCall(_) => true,
        Expr::Macro(m) => flow_macro(&m.mac).is_some(),
        _ => false,
    }
}

/// `join`, `settle` or `map` when `mac` is `flow::join!` (or a bare `join!`) etc.
pub(crate) fn flow_macro(mac: &Macro) -> Option<&'static str> {
    let segs: Vec<String> = mac
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let name = match segs.as_slice() {
        [one] => one.as_str(),
        [krate, one] if krate == "flow" => one.as_str(),
        _ => return None,
    };
    match name {
        "join" => Some("join"),
        "settle" => Some("settle"),
        "map" => Some("map"),
        _ => None,
    }
}

/// A macro of another crate that would hide step calls from the workflow: the concurrency
/// macros of tokio and futures. Returns the macro's name as written when its arguments
/// contain a call (a step that would silently stop being one).
pub(crate) fn hiding_macro(mac: &Macro) -> Option<String> {
    const HIDING: &[&str] = &[
        "join",
        "try_join",
        "select",
        "select_biased",
        "try_select",
        "join_all",
        "try_join_all",
    ];
    let segs: Vec<String> = mac
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let last = segs.last()?;
    if !HIDING.contains(&last.as_str()) {
        return None;
    }
    // `join!` / `settle!` alone or under `flow::` are ours.
    if flow_macro(mac).is_some() {
        return None;
    }
    has_call(mac.tokens.clone()).then(|| segs.join("::"))
}

/// Whether a token stream contains a call: an identifier followed by a parenthesised group.
fn has_call(ts: TokenStream) -> bool {
    let mut prev_ident = false;
    for tt in ts {
        match tt {
            TokenTree::Group(g) => {
                if prev_ident && g.delimiter() == Delimiter::Parenthesis {
                    return true;
                }
                if has_call(g.stream()) {
                    return true;
                }
                prev_ident = false;
            }
            TokenTree::Ident(_) => prev_ident = true,
            TokenTree::Punct(p) => prev_ident = p.as_char() == '>' && prev_ident,
            TokenTree::Literal(_) => prev_ident = false,
        }
    }
    false
}

/// Source-like text of some tokens, the same however the source was formatted:
/// `Some (x) = y` prints as `Some(x) = y`, `a . b ()` as `a.b()`.
pub(crate) fn text(t: &impl ToTokens) -> String {
    let mut out = String::new();
    write_tokens(t.to_token_stream(), &mut out);
    out
}

fn write_tokens(ts: TokenStream, out: &mut String) {
    // Whether the previous token asks for no space after it.
    let mut glue_next = true;
    // Whether the previous token was a punct joined to this one.
    let mut prev_joint = false;
    for tt in ts {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{ ", " }"),
                    Delimiter::None => ("", ""),
                };
                // A call or an index sticks to what it follows; a tuple after an operator does
                // not.
                let sticks = matches!(g.delimiter(), Delimiter::Parenthesis | Delimiter::Bracket)
                    && out.chars().last().is_some_and(|c| {
                        c.is_alphanumeric()
                            || c == '_'
                            || c == ')'
                            || c == '>'
                            || c == ']'
                            || c == '!'
                    });
                if !glue_next && !sticks {
                    out.push(' ');
                }
                out.push_str(open);
                write_tokens(g.stream(), out);
                out.push_str(close);
                glue_next = false;
            }
            TokenTree::Ident(i) => {
                if !glue_next {
                    out.push(' ');
                }
                out.push_str(&i.to_string());
                glue_next = false;
            }
            TokenTree::Literal(l) => {
                if !glue_next {
                    out.push(' ');
                }
                out.push_str(&l.to_string());
                glue_next = false;
            }
            TokenTree::Punct(p) => {
                let c = p.as_char();
                let joint = p.spacing() == Spacing::Joint;
                // Whether this punct continues an operator (`&&`, `::`, `=>`, `->`).
                let continues = prev_joint;
                // Punctuation that hugs the token before it.
                let hug_before = continues
                    || matches!(c, ',' | ';' | '.' | '?')
                    || (c == ':' && joint)
                    || (c == '!'
                        && !joint
                        && out
                            .chars()
                            .last()
                            .is_some_and(|l| l.is_alphanumeric() || l == '_'));
                // A prefix operator (`&x`, `!x`, `*x`, `-1`) binds to what follows.
                let unary = !continues
                    && matches!(c, '&' | '!' | '*' | '-')
                    && out
                        .trim_end()
                        .chars()
                        .last()
                        .is_none_or(|l| "([{,;=|&!<>+-*/%^:".contains(l));
                if !glue_next && !hug_before {
                    out.push(' ');
                }
                out.push(c);
                glue_next = joint
                    || unary
                    || matches!(c, '.' | '\'' | '#')
                    || (c == ':' && continues)
                    || (c == '!' && hug_before);
                prev_joint = joint;
                continue;
            }
        }
        prev_joint = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> String {
        text(&s.parse::<TokenStream>().unwrap())
    }

    #[test]
    fn printed_as_written() {
        assert_eq!(t("healthy"), "healthy");
        assert_eq!(t("let Some ( x ) = y"), "let Some(x) = y");
        assert_eq!(
            t("Health :: Degraded { lag } if lag > 3"),
            "Health::Degraded { lag } if lag > 3"
        );
        assert_eq!(
            t("node . is_up ( ) && ! draining"),
            "node.is_up() && !draining"
        );
        assert_eq!(t("n in nodes . iter ( )"), "n in nodes.iter()");
        assert_eq!(t("attempts <= 3"), "attempts <= 3");
        assert_eq!(t("Ok ( _ ) | Err ( _ )"), "Ok(_) | Err(_)");
        assert_eq!(t("x == &y"), "x == &y");
        assert_eq!(t("(a, b)"), "(a, b)");
        assert_eq!(t("x != -1 || *y"), "x != -1 || *y");
        assert_eq!(
            t("matches ! (h , Health :: Dead)"),
            "matches!(h, Health::Dead)"
        );
        assert_eq!(t("'outer"), "'outer");
    }

    #[test]
    fn hidden_steps() {
        let m: Macro = syn::parse_quote!(tokio::join!(a(x), b(y)));
        assert_eq!(hiding_macro(&m).as_deref(), Some("tokio::join"));
        let m: Macro = syn::parse_quote!(tokio::join!(fut_a, fut_b));
        assert_eq!(hiding_macro(&m), None);
        let m: Macro = syn::parse_quote!(flow::join!(a(x), b(y)));
        assert_eq!(hiding_macro(&m), None);
        let m: Macro = syn::parse_quote!(futures::select! { v = a(x) => v });
        assert_eq!(hiding_macro(&m).as_deref(), Some("futures::select"));
        let m: Macro = syn::parse_quote!(println!("{}", a(x)));
        assert_eq!(hiding_macro(&m), None);
    }
}
