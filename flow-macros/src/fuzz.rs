//! Property test: no input makes `flow!` or `#[workflow]` panic.
//!
//! Every input, however broken, must come back as a token stream: an expansion, or
//! `compile_error!` / `::core::compile_error!` invocations with a message (never an empty
//! stream). An expansion must parse as Rust (`flow!`'s as a block expression, `#[workflow]`'s
//! as items). The inputs are
//!
//! - mutations of a corpus of valid `flow!` pipelines and `#[workflow]` functions: tokens
//!   deleted, duplicated, swapped, replaced (by any piece, or a literal by a literal and an
//!   ident by an ident, which often still parses and reaches the checks behind the parser),
//!   inserted (punctuation, keywords, non-ASCII idents, literals such as `"0s"`,
//!   `"10 parsecs"`, `1e999` or integers past `u64::MAX`), the input truncated, runs of
//!   tokens wrapped in a new group, groups unwrapped or re-delimited, and tokens spliced in
//!   from other corpus entries;
//! - random token streams built from the same pieces, with random nesting (for `#[workflow]`,
//!   half of them as the body of a valid signature).
//!
//! `proc_macro2` runs outside a compiler in its fallback mode, so this is a plain unit test.
//! The number of cases comes from `FLOW_FUZZ_CASES` (default [`DEFAULT_CASES`], about two
//! seconds in a debug build); `PROPTEST_RNG_SEED=N` replays one sequence. A long run (100,000
//! cases take about 25 s in release), with a summary of what ran:
//!
//! ```text
//! FLOW_FUZZ_CASES=100000 cargo test -p flow-macros --release fuzz -- --nocapture
//! ```
//!
//! A failure prints the input (shrunk to a small one), the panic message and its location.
//! Inputs found this way are kept in [`fuzz_regressions`].

use core::fmt;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proc_macro2::{Delimiter, Group, Ident, Literal, Punct, Spacing, TokenStream, TokenTree};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

/// Cases when `FLOW_FUZZ_CASES` is not set.
const DEFAULT_CASES: u32 = 5_000;

// ---------------------------------------------------------------- corpus

/// Valid `flow!` pipelines, without the `$crate;` that the facade puts first.
const FLOW_CORPUS: &[&str] = &[
    "parse -> double -> square",
    r#"name = "arith"; parse -> double -> square"#,
    "double -> (double & square) -> add",
    "(slow_branch & failing_branch) [settle] -> count_ok",
    "range -> map(work, concurrency = 4) -> total",
    "range -> map(work, concurrency = 8, tolerate = 1) -> ok_count",
    "open -> branch(|a: &Account| a.plan) { Plan::Free => welcome, Plan::Pro => assign_manager -> welcome, }",
    r#"|id| self.db.fetch(id) [retry(max_attempts = 3)] -> (db.size & || ping()) -> |a, b| add(a, b) -> first: move |x: u32| f(x + 1)"#,
    r#"reserve [compensate = revoke] -> notify [retry(max_attempts = 3, backoff = exponential("200ms", 2.0)), timeout = "2s"]"#,
    r#"reserve -> notify [retry(max_attempts = 3), timeout = "1s", catch(recover, when = |e| e.error().is_some())]"#,
    "error = AppError; read_len -> halve",
    "error = TestError; split -> (map(((double -> square) & sub_workflow) -> add) -> sum & sum) -> add",
    r#"name = "everything", timeout = "10m", error = AppError;
       fetch [retry(max_attempts = 5, backoff = exponential("100ms", 2.0), max_delay = "2s", jitter = full,
                    max_elapsed = "30s", on = errors),
              retry(max_attempts = 2, backoff = constant("1s"), jitter = equal, when = is_transient),
              timeout = "5s", compensate = undo_fetch, catch(fallback, when = |e| e.is_timeout())]
       -> (a::left & crate::right & self::mid -> ::abs::path) [settle]
       -> map(item_step [timeout = "1s", catch = skip] -> (x & y), concurrency = 2, tolerate = 2)
       -> branch(pick) { 1 | 2 => small, Kind::Big { .. } => big -> bigger, _ => (p & q) }"#,
    "super::x -> r#type -> (a) -> ((b & c) [settle])",
    "timeout = \"1h 30m\"; step [retry(max_attempts = 1, backoff = none, on = timeouts)]",
];

/// Valid `#[workflow]` uses: the attribute's arguments and the function.
const WORKFLOW_CORPUS: &[(&str, &str)] = &[
    (
        "",
        "async fn sequence(n: u32) -> Result<u32, TestError> {
            let nodes = launch(n).await?;
            let nodes = check(nodes).await?;
            first(nodes).await
        }",
    ),
    (
        r#"timeout = "10m""#,
        r#"pub async fn provision(spec: Spec) -> Result<Cluster, Error> {
            #[compensate(teardown)]
            let nodes = launch(&spec).await?;
            #[retry(max_attempts = 8, backoff = exponential("200ms", 2.0), max_delay = "5s", jitter = full)]
            #[timeout("2s")]
            let nodes = wait_healthy(nodes).await?;
            let (a, b) = flow::join!(seed(&nodes, 1), seed(&nodes, 2)).await?;
            verify(nodes, a + b).await
        }"#,
    ),
    (
        "",
        r#"async fn catching() -> Result<u32, TestError> {
            #[timeout("250ms")]
            #[catch(fallback, when = |e| e.is_timeout())]
            let v = hang().await?;
            Ok(v)
        }"#,
    ),
    (
        "",
        r#"async fn compensating(panic_instead: bool) -> Result<(), TestError> {
            #[compensate(destroy)]
            let a = create("a").await?;
            #[compensate = destroy]
            let b = create("b").await?;
            if panic_instead {
                explode().await?;
            }
            boom(a, b).await
        }"#,
    ),
    (
        "",
        "async fn settling(flag: Arc<AtomicBool>) -> Result<usize, TestError> {
            let (a, b) = flow::settle!(slow(2, flag.clone()), fail_after(50)).await;
            let (c, d, e) = join!(#[retry(max_attempts = 3)] x(1), y(&a), self_::z::<u8>(b)).await?;
            Ok(usize::from(a.is_ok()) + c + d + e)
        }",
    ),
    (
        r#"name = "Custom", crate = "::my_flow", timeout = "1h 30m""#,
        r#"pub(crate) async fn methods(client: Client, ids: Vec<u64>) -> Result<Vec<u64>, Error> {
            let token = client.login::<Admin>("user").await?;
            let out = store(fetch(token, ids.clone()).await?).await?;
            let later = async move { not_a_step().await };
            let f = |x| async move { also_not(x).await };
            fn helper() {}
            #[retry(max_attempts = 2, on = timeouts, backoff = none)]
            #[retry(max_attempts = 4, backoff = constant("1s"), jitter = equal, max_elapsed = "1m", when = Error::is_transient)]
            client.commit(out).await?;
            Ok(out)
        }"#,
    ),
    (
        "",
        "async fn aliased(x: u8) -> MyResult<u8> {
            let y = match step(x).await? { 0 => other(x).await?, n => n };
            Ok(y)
        }",
    ),
    (
        "",
        r#"async fn control(c: Cluster, n: u32, ok: bool) -> Result<u32, String> {
            if ok { rejoin(&c).await?; } else if n > 2 { return fail(&c).await; } else { log(); }
            'outer: for shard in 0..n {
                while probe(&c, shard).await? {
                    if shard == 1 { continue 'outer; }
                    #[retry(max_attempts = 2)]
                    drain(&c, shard).await?;
                    break;
                }
                loop { if tick(&c).await? { break 'outer; } }
            }
            match probe(&c, n).await? { Health::Dead if n > 0 => replace(&c).await?, _ => {} }
            if let Some(x) = maybe(n) { flow::join!(a(x), b(x)).await?; }
            step_future(n);
            let all = flow::map!(vec![n], |m| #[timeout("1s")] check(&c, m), concurrency = 2, tolerate = 1).await?;
            Ok(all.len() as u32)
        }"#,
    ),
];

// ---------------------------------------------------------------- tokens

/// A token tree we can mutate (`proc_macro2` types are immutable and not `Send`).
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char, bool),
    Lit(String),
    Group(Delimiter, Vec<Tok>),
}

fn toks(ts: TokenStream) -> Vec<Tok> {
    ts.into_iter()
        .map(|tt| match tt {
            TokenTree::Ident(i) => Tok::Ident(i.to_string()),
            TokenTree::Punct(p) => Tok::Punct(p.as_char(), p.spacing() == Spacing::Joint),
            TokenTree::Literal(l) => Tok::Lit(l.to_string()),
            TokenTree::Group(g) => Tok::Group(g.delimiter(), toks(g.stream())),
        })
        .collect()
}

fn parse_toks(src: &str) -> Vec<Tok> {
    toks(TokenStream::from_str(src).unwrap_or_else(|e| panic!("bad fuzz piece {src:?}: {e}")))
}

fn stream(ts: &[Tok]) -> TokenStream {
    ts.iter()
        .map(|t| match t {
            Tok::Ident(s) => match s.strip_prefix("r#") {
                Some(raw) => TokenTree::Ident(Ident::new_raw(raw, proc_macro2::Span::call_site())),
                None => TokenTree::Ident(Ident::new(s, proc_macro2::Span::call_site())),
            },
            Tok::Punct(c, joint) => TokenTree::Punct(Punct::new(
                *c,
                if *joint {
                    Spacing::Joint
                } else {
                    Spacing::Alone
                },
            )),
            Tok::Lit(s) => TokenTree::Literal(
                Literal::from_str(s).unwrap_or_else(|e| panic!("bad literal {s:?}: {e:?}")),
            ),
            Tok::Group(d, inner) => TokenTree::Group(Group::new(*d, stream(inner))),
        })
        .collect()
}

/// Random pieces: keywords of the macros, Rust keywords, idents, literals, punctuation and
/// small groups. Each is one or a few tokens.
#[rustfmt::skip]
const PIECES: &[&str] = &[
    // the macros' keywords
    "retry", "timeout", "map", "branch", "catch", "settle", "compensate", "tolerate",
    "concurrency", "max_attempts", "backoff", "max_delay", "max_elapsed", "jitter", "on",
    "when", "exponential", "constant", "none", "full", "equal", "any", "errors", "timeouts",
    "name", "error", "crate", "join", "flow", "workflow",
    // Rust keywords and idents
    "async", "fn", "await", "let", "move", "self", "super", "Self", "_", "match", "if", "else",
    "loop", "return", "impl", "dyn", "where", "pub", "const", "unsafe", "mut", "ref", "for",
    "in", "as", "struct", "enum", "type", "true", "false", "r#type", "Result", "Ok", "Err",
    "String", "u32", "fetch", "store", "x", "e", "v", "self_",
    // non-ASCII names (steps and functions become UpperCamelCase variant and type names)
    "ñandú", "straße", "_\u{663}", "_\u{903}",
    // literals
    r#""0s""#, r#""10 parsecs""#, r#""2s""#, r#""200ms""#, r#""1h 30m""#, r#""""#,
    r#""Provision""#, r#""::my_flow""#, r#""not a path""#, r#""18446744073709551616s""#,
    "0", "1", "3", "4294967296", "18446744073709551615", "18446744073709551616",
    "340282366920938463463374607431768211456", "0.0", "0.5", "1.0", "2.0", "1e308", "1e999",
    "1.5e-10", "0x10", "1_000", "1u8", "2.0f32", "'c'", r#"b"bytes""#, "b'x'", r#"r"raw""#,
    "r#\"raw\"#", r#"c"cstr""#, "\"\u{b2}\"", "'\u{663}'",
    // punctuation
    "->", "&", "=>", ",", ";", "=", "#", "!", "?", ".", "..", "::", ":", "|", "||", "*", "+",
    "-", "<", ">", "==", "&&", "@", "$", "'a", "-1",
    // groups and fragments
    "()", "[]", "{}", "(x)", "[settle]", "{ a => b }", "[retry(max_attempts = 3)]",
    "#[retry(max_attempts = 3)]", "#[timeout(\"1s\")]", "#[catch(recover)]", ".await",
    ".await?", "step(x).await?", "let y = step(x).await?;", "(a & b)", "map(f)",
    "branch(s) { _ => a }", "flow::join!(a(), b())", "::flow;",
];

fn pieces() -> &'static [Vec<Tok>] {
    static P: OnceLock<Vec<Vec<Tok>>> = OnceLock::new();
    P.get_or_init(|| PIECES.iter().map(|s| parse_toks(s)).collect())
}

struct Corpus {
    flows: Vec<Vec<Tok>>,
    workflows: Vec<(Vec<Tok>, Vec<Tok>)>,
}

fn corpus() -> &'static Corpus {
    static C: OnceLock<Corpus> = OnceLock::new();
    C.get_or_init(|| Corpus {
        flows: FLOW_CORPUS.iter().map(|s| parse_toks(s)).collect(),
        workflows: WORKFLOW_CORPUS
            .iter()
            .map(|(a, f)| (parse_toks(a), parse_toks(f)))
            .collect(),
    })
}

// ---------------------------------------------------------------- mutations

/// A mutation; positions count tokens in pre-order (a group, then its contents) modulo the
/// number of tokens.
#[derive(Clone, Debug)]
enum Op {
    Delete(u32),
    Duplicate(u32),
    SwapNext(u32),
    Replace(u32, usize),
    /// Replaces a literal with another literal, an ident with another ident: the input often
    /// still parses, and reaches the checks behind the parser.
    ReplaceLike(u32, usize),
    Insert(u32, bool, usize),
    Truncate(u32),
    Wrap(u32, u8, u8),
    Unwrap(u32),
    Redelimit(u32, u8),
    Splice(u32, usize, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let n = PIECES.len();
    let c = FLOW_CORPUS.len() + WORKFLOW_CORPUS.len();
    prop_oneof![
        3 => any::<u32>().prop_map(Op::Delete),
        1 => any::<u32>().prop_map(Op::Duplicate),
        2 => any::<u32>().prop_map(Op::SwapNext),
        3 => (any::<u32>(), 0..n).prop_map(|(p, k)| Op::Replace(p, k)),
        4 => (any::<u32>(), 0..n).prop_map(|(p, k)| Op::ReplaceLike(p, k)),
        3 => (any::<u32>(), any::<bool>(), 0..n).prop_map(|(p, a, k)| Op::Insert(p, a, k)),
        1 => any::<u32>().prop_map(Op::Truncate),
        1 => (any::<u32>(), 1..4u8, 0..4u8).prop_map(|(p, l, d)| Op::Wrap(p, l, d)),
        1 => any::<u32>().prop_map(Op::Unwrap),
        1 => (any::<u32>(), 0..4u8).prop_map(|(p, d)| Op::Redelimit(p, d)),
        1 => (any::<u32>(), 0..c, any::<u32>()).prop_map(|(p, e, q)| Op::Splice(p, e, q)),
    ]
}

fn delim(d: u8) -> Delimiter {
    match d % 4 {
        0 => Delimiter::Parenthesis,
        1 => Delimiter::Bracket,
        2 => Delimiter::Brace,
        _ => Delimiter::None,
    }
}

/// Paths (child indices from the root) of every token, in pre-order.
fn paths(ts: &[Tok], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, t) in ts.iter().enumerate() {
        prefix.push(i);
        out.push(prefix.clone());
        if let Tok::Group(_, inner) = t {
            paths(inner, prefix, out);
        }
        prefix.pop();
    }
}

/// The list that holds the token at `path`, and its index there.
fn level<'a>(ts: &'a mut Vec<Tok>, path: &[usize]) -> (&'a mut Vec<Tok>, usize) {
    match path {
        [] => (ts, 0),
        [i] => (ts, *i),
        [i, rest @ ..] => match &mut ts[*i] {
            Tok::Group(_, inner) => level(inner, rest),
            _ => unreachable!("paths only descend into groups"),
        },
    }
}

fn pick(ts: &[Tok], p: u32) -> Vec<usize> {
    let mut all = Vec::new();
    paths(ts, &mut Vec::new(), &mut all);
    if all.is_empty() {
        Vec::new()
    } else {
        all.swap_remove(p as usize % all.len())
    }
}

fn all_corpus_tokens(entry: usize) -> Vec<Tok> {
    let c = corpus();
    match c.flows.get(entry) {
        Some(f) => f.clone(),
        None => c.workflows[(entry - c.flows.len()) % c.workflows.len()]
            .1
            .clone(),
    }
}

fn apply(ts: &mut Vec<Tok>, op: &Op) {
    let pieces = pieces();
    match *op {
        Op::Insert(p, after, k) => {
            let path = pick(ts, p);
            let (l, i) = level(ts, &path);
            let at = if after && !l.is_empty() { i + 1 } else { i };
            for (j, t) in pieces[k].iter().enumerate() {
                l.insert(at + j, t.clone());
            }
        }
        Op::Splice(p, entry, q) => {
            let src = all_corpus_tokens(entry);
            let qpath = pick(&src, q);
            if qpath.is_empty() {
                return;
            }
            let mut src = src;
            let (sl, si) = level(&mut src, &qpath);
            let tok = sl[si].clone();
            let path = pick(ts, p);
            let (l, i) = level(ts, &path);
            l.insert(i, tok);
        }
        _ => {
            let p = match *op {
                Op::Delete(p)
                | Op::Duplicate(p)
                | Op::SwapNext(p)
                | Op::Replace(p, _)
                | Op::ReplaceLike(p, _)
                | Op::Truncate(p)
                | Op::Wrap(p, ..)
                | Op::Unwrap(p)
                | Op::Redelimit(p, _) => p,
                Op::Insert(..) | Op::Splice(..) => unreachable!(),
            };
            let path = pick(ts, p);
            if path.is_empty() {
                return;
            }
            if let Op::Truncate(_) = op {
                // Cut everything after the token in pre-order: its later siblings and those
                // of every enclosing group.
                for depth in (1..=path.len()).rev() {
                    let (l, i) = level(ts, &path[..depth]);
                    l.truncate(i + usize::from(depth < path.len()));
                }
                return;
            }
            let (l, i) = level(ts, &path);
            match *op {
                Op::Delete(_) => {
                    l.remove(i);
                }
                Op::Duplicate(_) => {
                    let t = l[i].clone();
                    l.insert(i, t);
                }
                Op::SwapNext(_) if i + 1 < l.len() => l.swap(i, i + 1),
                Op::Replace(_, k) => {
                    l.splice(i..=i, pieces[k].iter().cloned());
                }
                Op::ReplaceLike(_, k) => {
                    let same: Vec<&Tok> = pieces
                        .iter()
                        .filter_map(|p| match p.as_slice() {
                            [t] if core::mem::discriminant(t) == core::mem::discriminant(&l[i]) => {
                                Some(t)
                            }
                            _ => None,
                        })
                        .collect();
                    if !same.is_empty() {
                        l[i] = same[k % same.len()].clone();
                    }
                }
                Op::Wrap(_, len, d) => {
                    let end = (i + usize::from(len)).min(l.len());
                    let inner: Vec<Tok> = l.drain(i..end).collect();
                    l.insert(i, Tok::Group(delim(d), inner));
                }
                Op::Unwrap(_) => {
                    if let Tok::Group(_, inner) = l[i].clone() {
                        l.splice(i..=i, inner);
                    }
                }
                Op::Redelimit(_, d) => {
                    if let Tok::Group(old, _) = &mut l[i] {
                        *old = delim(d);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Builds nested token trees from a sequence of choices: a piece, or opening/closing a group.
fn build(choices: &[usize]) -> Vec<Tok> {
    let pieces = pieces();
    let mut stack: Vec<(Delimiter, Vec<Tok>)> = vec![(Delimiter::None, Vec::new())];
    for &c in choices {
        if let Some(p) = pieces.get(c) {
            if let Some(top) = stack.last_mut() {
                top.1.extend(p.iter().cloned());
            }
        } else if c - pieces.len() < 3 {
            stack.push((delim((c - pieces.len()) as u8), Vec::new()));
        } else if stack.len() > 1
            && let Some((d, inner)) = stack.pop()
            && let Some(top) = stack.last_mut()
        {
            top.1.push(Tok::Group(d, inner));
        }
    }
    while stack.len() > 1 {
        if let Some((d, inner)) = stack.pop()
            && let Some(top) = stack.last_mut()
        {
            top.1.push(Tok::Group(d, inner));
        }
    }
    stack.pop().map(|(_, t)| t).unwrap_or_default()
}

fn random_tokens(max: usize) -> impl Strategy<Value = Vec<Tok>> {
    // Opening a group (of one of three kinds) is thrice as likely as a given piece, and so is
    // closing one.
    proptest::collection::vec(0..PIECES.len() + 6, 0..max).prop_map(|c| build(&c))
}

// ---------------------------------------------------------------- cases

#[derive(Clone)]
enum Case {
    /// `flow_inner!` input: the crate path (`::flow;`) when `prefix`, then `tokens`.
    Flow { prefix: bool, tokens: Vec<Tok> },
    /// `#[workflow(args)] item`.
    Workflow { args: Vec<Tok>, item: Vec<Tok> },
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Case::Flow { prefix, tokens } => {
                let p = if *prefix { "::flow; " } else { "" };
                write!(f, "flow::expand({{ {p}{} }})", stream(tokens))
            }
            Case::Workflow { args, item } => {
                write!(f, "#[workflow({})] {}", stream(args), stream(item))
            }
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    let flows = FLOW_CORPUS.len();
    let wfs = WORKFLOW_CORPUS.len();
    let ops = || proptest::collection::vec(op(), 1..4);
    let flow_mutation = (0..flows, ops(), 0..16u8).prop_map(|(e, ops, p)| {
        let mut tokens = corpus().flows[e].clone();
        for o in &ops {
            apply(&mut tokens, o);
        }
        Case::Flow {
            prefix: p != 0,
            tokens,
        }
    });
    let workflow_mutation =
        (0..wfs, ops(), proptest::collection::vec(op(), 0..2)).prop_map(|(e, ops, arg_ops)| {
            let (mut args, mut item) = corpus().workflows[e].clone();
            for o in &ops {
                apply(&mut item, o);
            }
            for o in &arg_ops {
                apply(&mut args, o);
            }
            Case::Workflow { args, item }
        });
    let random_flow = (random_tokens(40), 0..4u8).prop_map(|(t, p)| Case::Flow {
        prefix: p != 0,
        tokens: t,
    });
    let random_workflow =
        (random_tokens(12), random_tokens(40), 0..3u8).prop_map(|(args, body, shell)| {
            let item = match shell {
                // A body of random tokens in a valid signature reaches the step rewriter.
                0 | 1 => {
                    let mut f = parse_toks("async fn f(x: u32) -> Result<u32, E>");
                    f.push(Tok::Group(Delimiter::Brace, body));
                    f
                }
                _ => body,
            };
            Case::Workflow { args, item }
        });
    prop_oneof![
        3 => flow_mutation,
        3 => workflow_mutation,
        2 => random_flow,
        2 => random_workflow,
    ]
}

// ---------------------------------------------------------------- the property

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic hook that records (and silences) panics on threads running the fuzzer and leaves
/// every other thread to the previous hook.
fn install_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                LAST_PANIC.with(|l| *l.borrow_mut() = Some(info.to_string()));
            } else {
                prev(info);
            }
        }));
    });
}

#[derive(Default)]
struct Stats {
    checked: AtomicU64,
    flow_expanded: AtomicU64,
    flow_errors: AtomicU64,
    workflow_expanded: AtomicU64,
    workflow_errors: AtomicU64,
    internal_errors: AtomicU64,
}

/// Strips leading `compile_error!(..)` / `::core::compile_error!(..)` invocations; returns
/// their messages and the rest.
fn compile_errors(ts: TokenStream) -> (Vec<String>, Vec<TokenTree>) {
    let tts: Vec<TokenTree> = ts.into_iter().collect();
    // `flow!` is an expression, so it wraps its errors in one block: `{ compile_error!(..) .. }`.
    if let [TokenTree::Group(g)] = tts.as_slice()
        && g.delimiter() == proc_macro2::Delimiter::Brace
    {
        let inner = g.stream();
        let (msgs, rest) = compile_errors(inner.clone());
        if !msgs.is_empty() && rest.is_empty() {
            return (msgs, Vec::new());
        }
    }
    let text = |k: usize| tts.get(k).map(ToString::to_string).unwrap_or_default();
    let mut msgs = Vec::new();
    let mut i = 0;
    loop {
        let qualified = text(i) == ":"
            && text(i + 1) == ":"
            && text(i + 2) == "core"
            && text(i + 3) == ":"
            && text(i + 4) == ":";
        let at = if qualified { i + 5 } else { i };
        let Some(TokenTree::Group(g)) = tts.get(at + 2) else {
            break;
        };
        if text(at) != "compile_error" || text(at + 1) != "!" {
            break;
        }
        msgs.push(g.stream().to_string());
        i = at + 3;
        // `compile_error!(..);` as an item.
        if text(i) == ";" {
            i += 1;
        }
    }
    let rest = tts[i..].to_vec();
    (msgs, rest)
}

fn check_errors(msgs: &[String], stats: &Stats) -> Result<(), String> {
    for m in msgs {
        let lit = Literal::from_str(m).ok();
        if !(m.starts_with('"') && m.len() > 2 && lit.is_some()) {
            return Err(format!(
                "compile_error! without a message string literal: {m}"
            ));
        }
        if m.contains("internal") {
            stats.internal_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn check(case: &Case, stats: &Stats) -> Result<(), String> {
    stats.checked.fetch_add(1, Ordering::Relaxed);
    CAPTURING.with(|c| c.set(true));
    LAST_PANIC.with(|l| l.borrow_mut().take());
    let result = panic::catch_unwind(AssertUnwindSafe(|| match case {
        Case::Flow { prefix, tokens } => {
            let mut input = if *prefix {
                TokenStream::from_str("::flow;").unwrap_or_default()
            } else {
                TokenStream::new()
            };
            input.extend(stream(tokens));
            crate::flow::expand(input)
        }
        Case::Workflow { args, item } => crate::workflow::expand(stream(args), stream(item)),
    }));
    CAPTURING.with(|c| c.set(false));
    let out = match result {
        Ok(out) => out,
        Err(payload) => {
            let msg = LAST_PANIC
                .with(|l| l.borrow_mut().take())
                .or_else(|| payload.downcast_ref::<&str>().map(ToString::to_string))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            return Err(format!("the macro panicked on {case:?}\n{msg}"));
        }
    };
    if out.is_empty() {
        return Err(format!(
            "the macro returned an empty stream (neither an expansion nor compile_error!) on {case:?}"
        ));
    }
    let (msgs, rest) = compile_errors(out.clone());
    check_errors(&msgs, stats).map_err(|e| format!("{e}\non {case:?}"))?;
    let rest: TokenStream = rest.into_iter().collect();
    match case {
        Case::Flow { .. } => {
            if !msgs.is_empty() {
                if !rest.is_empty() {
                    return Err(format!(
                        "flow! returned compile errors followed by other tokens on {case:?}\noutput: {out}"
                    ));
                }
                stats.flow_errors.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // Without the crate path, the tokens before the first `;` are taken for it: only
            // the facade calls `flow_inner!`, and it always passes `$crate;`.
            if let Case::Flow { prefix: false, .. } = case {
                stats.flow_expanded.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // An expansion: one block expression that parses.
            let is_block = matches!(
                rest.clone().into_iter().collect::<Vec<_>>().as_slice(),
                [TokenTree::Group(g)] if g.delimiter() == Delimiter::Brace
            );
            if !is_block {
                return Err(format!(
                    "flow! returned neither compile_error! nor a block on {case:?}\noutput: {out}"
                ));
            }
            syn::parse2::<syn::File>(quote::quote!(fn __expansion() { let _ = #out; }))
                .map_err(|e| {
                    format!("flow! expanded to tokens that do not parse ({e}) on {case:?}\noutput: {out}")
                })?;
            stats.flow_expanded.fetch_add(1, Ordering::Relaxed);
        }
        Case::Workflow { .. } => {
            if !msgs.is_empty() {
                stats.workflow_errors.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let stray = rest
                .clone()
                .into_iter()
                .any(|t| matches!(&t, TokenTree::Ident(i) if i == "compile_error"));
            if stray {
                return Err(format!(
                    "#[workflow] returned compile_error! after other tokens on {case:?}\noutput: {out}"
                ));
            }
            syn::parse2::<syn::File>(out.clone()).map_err(|e| {
                format!("#[workflow] expanded to items that do not parse ({e}) on {case:?}\noutput: {out}")
            })?;
            stats.workflow_expanded.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn cases() -> u32 {
    match std::env::var("FLOW_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("FLOW_FUZZ_CASES must be a number, not {v:?}")),
        Err(_) => DEFAULT_CASES,
    }
}

#[test]
fn corpus_expands_without_errors() {
    let stats = Stats::default();
    for (i, t) in corpus().flows.iter().enumerate() {
        let case = Case::Flow {
            prefix: true,
            tokens: t.clone(),
        };
        check(&case, &stats).unwrap_or_else(|e| panic!("flow corpus {i}: {e}"));
        assert_eq!(
            stats.flow_expanded.load(Ordering::Relaxed),
            i as u64 + 1,
            "flow corpus {i} does not expand: {}",
            crate::flow::expand(stream(&parse_toks(&format!("::flow; {}", FLOW_CORPUS[i]))))
        );
    }
    for (i, (a, f)) in corpus().workflows.iter().enumerate() {
        let case = Case::Workflow {
            args: a.clone(),
            item: f.clone(),
        };
        check(&case, &stats).unwrap_or_else(|e| panic!("workflow corpus {i}: {e}"));
        assert_eq!(
            stats.workflow_expanded.load(Ordering::Relaxed),
            i as u64 + 1,
            "workflow corpus {i} does not expand: {}",
            crate::workflow::expand(stream(a), stream(f))
        );
    }
    // The mutations start from inputs that expand: otherwise they would only test errors.
    assert_eq!(
        stats.flow_expanded.load(Ordering::Relaxed),
        FLOW_CORPUS.len() as u64
    );
    assert_eq!(
        stats.workflow_expanded.load(Ordering::Relaxed),
        WORKFLOW_CORPUS.len() as u64
    );
}

#[test]
fn fuzz_macros_never_panic() {
    install_hook();
    let n = cases();
    let config = Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    };
    let stats = Stats::default();
    let t0 = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |c| check(&c, &stats).map_err(TestCaseError::fail));
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "fuzz: {} inputs checked ({n} cases asked) in {:.1?}: flow! {} expanded, {} compile errors; #[workflow] {} expanded, {} compile errors; {} internal errors",
        load(&stats.checked),
        t0.elapsed(),
        load(&stats.flow_expanded),
        load(&stats.flow_errors),
        load(&stats.workflow_expanded),
        load(&stats.workflow_errors),
        load(&stats.internal_errors),
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, minimal)) => {
            panic!("{reason}\n\nminimal input: {minimal:?}")
        }
        Err(TestError::Abort(reason)) => panic!("fuzzing aborted: {reason}"),
    }
}

/// Inputs the fuzzer found, kept as regressions.
#[test]
fn fuzz_regressions() {
    install_hook();
    let stats = Stats::default();
    let flows = [
        // `Self` as a state variant.
        "error = AppError ; read_len -> self",
        "a -> self_",
        // A name whose UpperCamelCase starts with a character that cannot start an ident.
        "_\u{663}",
        "a -> _\u{903}",
    ];
    for f in flows {
        let case = Case::Flow {
            prefix: true,
            tokens: parse_toks(f),
        };
        check(&case, &stats).unwrap_or_else(|e| panic!("{e}"));
    }
    let workflows = [
        // A method step with a turbofish.
        (
            "",
            "async fn f(c: C) -> Result<u8, E> { let t = c.get::<u8>().await?; Ok(t) }",
        ),
        ("", "async fn self_() -> Result<u8, E> { self_().await }"),
        (
            "",
            "async fn _\u{663}() -> Result<u8, E> { _\u{663}().await }",
        ),
        // A step named after its tokens, `"²"`: alphanumeric, but not an ident character.
        ("", "async fn f() -> Result<u8, E> { \"\u{b2}\"(x).await }"),
    ];
    for (a, f) in workflows {
        let case = Case::Workflow {
            args: parse_toks(a),
            item: parse_toks(f),
        };
        check(&case, &stats).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(stats.flow_expanded.load(Ordering::Relaxed), 4);
    assert_eq!(stats.workflow_expanded.load(Ordering::Relaxed), 4);
}
