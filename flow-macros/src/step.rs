//! The one piece of code generation both front ends share: a step call under its policies.
//!
//! Input/output pairs (`__ctx` is the run context, `k` the step's node id; abridged: the
//! compile-time checks that report mistakes in our words are shown as `check(..)`, see
//! `flow-runtime/src/checks.rs`):
//!
//! ```text
//! fetch(url).await                    { let __f = fetch(url);
//!                                       let __f = check_error_converts::<E, fetch>(__f);
//!                                       let __m = output_of(&__f);
//!                                       let __r = __ctx.step(NodeId(k), __f).await; (__r, __m) }
//!
//! #[retry(max_attempts = 3)]          { let __a0 = url;
//! fetch(url).await                      let __mk = || fetch(check_clone::<fetch>(&__a0));
//!                                       let __r = __ctx.step_retry(NodeId(k), &[RULES], __mk).await; .. }
//!
//! + #[timeout("2s")], or durable:       let __r = __ctx.step_with(NodeId(k), POLICY, __mk).await;
//!
//! #[timeout("2s")] fetch(url).await   { .. let __r = __ctx.step_timeout(NodeId(k), 2s, __f).await; .. }
//!
//! + catch(recover, when = p)          let __r = __ctx.catch(__r, __ctx.catch_when(p), NodeId(r),
//!                                                         |e| recover(check_takes::<recover, fetch>(e))).await;
//! + catch(recover, on = timeouts)     let __r = __ctx.catch(__r, __ctx.catch_on(CatchOn::Timeouts), ..).await;
//! + compensate(undo)                  let __r = __ctx.compensate(NodeId(k), __r,
//!                                                              |o| undo(check_takes::<undo, fetch>(o)));
//! ```
//!
//! The block evaluates to `Result<T, flow::StepError<E>>` (with `#[workflow]`, paired with a
//! marker of the step's output type); `#[workflow]` hands it to the body with
//! `__ctx.surface_ok(..)` / `__ctx.surface_as(..)`, `flow!` propagates it with `?`.

use std::cell::RefCell;
use std::collections::BTreeSet;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{AngleBracketedGenericArguments, Expr, Ident};

use crate::policy::Policy;

/// How the step is called.
pub(crate) enum Call<'a> {
    /// `func(args..)`
    Func { func: &'a Expr, args: Vec<&'a Expr> },
    /// `recv.method::<T>(args..)`
    Method {
        recv: &'a Expr,
        method: &'a Ident,
        turbofish: Option<&'a AngleBracketedGenericArguments>,
        args: Vec<&'a Expr>,
    },
    /// `flow!`: `func(input)`, the value on the incoming edge.
    Input { func: &'a Expr, input: &'a Ident },
}

/// Context shared by every step of one expansion.
pub(crate) struct Gen<'a> {
    pub(crate) krate: &'a TokenStream,
    pub(crate) ctx: &'a Ident,
    /// `flow!` without a declared error type: the steps' error type *is* the flow's.
    pub(crate) exact: bool,
    /// `#[workflow]`: also yield a marker of the step's output type, so that the body gets the
    /// step's own shape back (`Result<T, E>`, or `()` for an infallible step).
    pub(crate) marker: bool,
    /// The workflow's error type, when it is written down: each step is then checked to
    /// convert into it, with an error that names the step.
    pub(crate) error_ty: Option<&'a TokenStream>,
    /// Marker types named after the steps.
    pub(crate) markers: &'a Markers,
    /// A durable workflow: each step is answered from the run's store when recorded there,
    /// and committed to it when run (`Ctx::durable_step`, ..).
    pub(crate) durable: bool,
}

/// Types named after the steps, so that our diagnostics can name them (`step `wait_healthy`
/// ..`).
///
/// rustc prints a type by its bare name only while no other item of the crate (and no public
/// item of its direct dependencies) has that name, so a marker *struct* prints short only when
/// one macro of the crate names the step. `#[workflow]` therefore names its steps with *type
/// parameters* of the body's function ([`Markers::for_workflow`]): a type parameter is
/// printed by its name, always, and the body is called with `()` for each. A name the body
/// also uses in the type namespace (a module `health` beside a step `health`), which a
/// parameter would shadow, keeps a marker struct. `flow!` (an expression: its steps run in a
/// closure, which cannot be generic) uses marker structs, defined once per expansion in a
/// small module the front end emits ([`Markers::definitions`]).
pub(crate) struct Markers {
    module: Ident,
    /// Names defined as marker structs in `module`.
    names: RefCell<BTreeSet<String>>,
    /// `#[workflow]`: the names given as type parameters of the body's function.
    params: Option<RefCell<BTreeSet<String>>>,
    /// Names a parameter must not take (the body uses them in the type namespace, or the
    /// function's own generics do).
    taken: BTreeSet<String>,
}

impl Markers {
    /// Marker structs in `module` (`flow!`).
    pub(crate) fn new(module: Ident) -> Self {
        Markers {
            module,
            names: RefCell::new(BTreeSet::new()),
            params: None,
            taken: BTreeSet::new(),
        }
    }

    /// Type parameters where they shadow nothing of `taken`, marker structs in `module`
    /// otherwise (`#[workflow]`).
    pub(crate) fn for_workflow(module: Ident, taken: BTreeSet<String>) -> Self {
        Markers {
            module,
            names: RefCell::new(BTreeSet::new()),
            params: Some(RefCell::new(BTreeSet::new())),
            taken,
        }
    }

    /// The path of the marker type of step `name`.
    pub(crate) fn path(&self, name: &str, span: Span) -> TokenStream {
        let ident = match syn::parse_str::<Ident>(name) {
            Ok(i) if !i.to_string().starts_with("r#") => i,
            _ => Ident::new("step", Span::call_site()),
        };
        let text = ident.to_string();
        let mut ident = ident;
        ident.set_span(span);
        if let Some(params) = &self.params
            && !self.taken.contains(&text)
        {
            params.borrow_mut().insert(text);
            return quote_spanned!(span=> #ident);
        }
        self.names.borrow_mut().insert(text);
        let module = &self.module;
        quote_spanned!(span=> #module::#ident)
    }

    /// The type parameters (`#[workflow]`), in order: `launch, wait_healthy`.
    pub(crate) fn params(&self) -> Vec<Ident> {
        self.params.as_ref().map_or_else(Vec::new, |p| {
            p.borrow()
                .iter()
                .map(|n| Ident::new(n, Span::call_site()))
                .collect()
        })
    }

    /// `mod __flow_steps { pub struct launch {} .. }`, or nothing without marker structs.
    pub(crate) fn definitions(&self) -> TokenStream {
        let module = &self.module;
        let names = self
            .names
            .borrow()
            .iter()
            .map(|n| Ident::new(n, Span::call_site()))
            .collect::<Vec<_>>();
        if names.is_empty() && self.params.is_some() {
            return TokenStream::new();
        }
        quote! {
            #[doc(hidden)]
            #[allow(non_camel_case_types, non_snake_case, dead_code, unreachable_pub)]
            mod #module {
                #(
                    #[doc(hidden)]
                    pub struct #names {}
                )*
            }
        }
    }
}

/// The names a `#[workflow]` function (its signature and body) and the generated code's crate
/// path use in the type namespace, where a type parameter of the same name would shadow them:
/// every identifier followed by `::` (a module, a type, an enum: also inside macro calls,
/// which are only tokens here), every identifier of `krate`, and the first segment of every
/// path in a type, a struct expression or a struct pattern.
pub(crate) fn type_namespace_names(func: &syn::ItemFn, krate: &TokenStream) -> BTreeSet<String> {
    use quote::ToTokens as _;
    use syn::visit::Visit;

    struct Names(BTreeSet<String>);
    impl Names {
        fn first(&mut self, path: &syn::Path) {
            if let Some(s) = path.segments.first() {
                self.0.insert(s.ident.to_string());
            }
        }
        fn tokens(&mut self, tokens: TokenStream) {
            let mut prev: Option<String> = None;
            let mut colons = 0;
            for t in tokens {
                match t {
                    proc_macro2::TokenTree::Ident(i) => {
                        prev = Some(i.to_string());
                        colons = 0;
                    }
                    proc_macro2::TokenTree::Punct(p) if p.as_char() == ':' => {
                        colons += 1;
                        if colons == 2
                            && let Some(name) = prev.take()
                        {
                            self.0.insert(name);
                        }
                    }
                    proc_macro2::TokenTree::Group(g) => {
                        self.tokens(g.stream());
                        prev = None;
                        colons = 0;
                    }
                    _ => {
                        prev = None;
                        colons = 0;
                    }
                }
            }
        }
    }
    impl<'ast> Visit<'ast> for Names {
        fn visit_type_path(&mut self, t: &'ast syn::TypePath) {
            self.first(&t.path);
            syn::visit::visit_type_path(self, t);
        }
        fn visit_expr_struct(&mut self, e: &'ast syn::ExprStruct) {
            self.first(&e.path);
            syn::visit::visit_expr_struct(self, e);
        }
        fn visit_pat_struct(&mut self, p: &'ast syn::PatStruct) {
            self.first(&p.path);
            syn::visit::visit_pat_struct(self, p);
        }
    }
    let mut names = Names(BTreeSet::new());
    names.tokens(func.sig.to_token_stream());
    names.tokens(func.block.to_token_stream());
    names.visit_signature(&func.sig);
    names.visit_block(&func.block);
    for t in krate.clone() {
        if let proc_macro2::TokenTree::Ident(i) = t {
            names.0.insert(i.to_string());
        }
    }
    names.0
}

impl Gen<'_> {
    /// The context method that runs a step: `plain`, or its durable twin.
    fn method(&self, plain: &str) -> Ident {
        if self.durable {
            format_ident!("durable_{}", plain)
        } else {
            Ident::new(plain, Span::call_site())
        }
    }

    fn node(&self, id: u32) -> TokenStream {
        let krate = self.krate;
        quote!(#krate::NodeId(#id))
    }

    fn exact(&self, fut: TokenStream) -> TokenStream {
        let ctx = self.ctx;
        let fut = self.child(fut);
        if self.exact {
            quote!(#ctx.exact(#fut))
        } else {
            fut
        }
    }

    /// `flow!`: a step that is a `#[workflow]` function (its future gives
    /// `Result<T, flow::Error<X>>`) hands the child run's failure to the step engine as the
    /// step's own (`X` as the step's error, a timeout as a timeout, a panic as a panic), so no
    /// `From<flow::Error<X>>` impl is needed. Other steps pass through. (`#[workflow]` bodies
    /// keep seeing the child's `Result<T, flow::Error<X>>`.)
    fn child(&self, fut: TokenStream) -> TokenStream {
        if self.marker {
            return fut;
        }
        let krate = self.krate;
        let c = Ident::new("__flow_c", Span::mixed_site());
        let k = Ident::new("__flow_k", Span::mixed_site());
        quote!({
            #[allow(unused_imports)]
            use #krate::__private::{ChildNo as _, ChildYes as _};
            let #c = #fut;
            let #k = (&#krate::__private::Probe(&#c, ::core::marker::PhantomData::<()>)).flow_child();
            #krate::__private::child_step(#c, #k)
        })
    }

    /// The step's call, with each argument replaced by `arg(i, expr)`.
    fn call_with(
        &self,
        call: &Call<'_>,
        mut arg: impl FnMut(usize, &Expr) -> TokenStream,
    ) -> TokenStream {
        match call {
            Call::Func { func, args } => {
                let args = args.iter().enumerate().map(|(i, a)| arg(i, a));
                quote!(#func(#(#args),*))
            }
            Call::Method {
                recv,
                method,
                turbofish,
                args,
            } => {
                let args = args.iter().enumerate().map(|(i, a)| arg(i, a));
                let tf = turbofish; // parsed with its `::`
                quote!(#recv.#method #tf(#(#args),*))
            }
            // Spanned on the step's name, so a type mismatch points at the user's step.
            Call::Input { func, input } => {
                let span = syn::spanned::Spanned::span(func);
                let mut input = (*input).clone();
                input.set_span(Span::mixed_site().located_at(span));
                quote_spanned!(span=> #func(#input))
            }
        }
    }

    /// When the error type is written down: a check, with our message, that the step's
    /// output fits it. `fut_type` is a `PhantomData` of the step's future type.
    fn converts(
        &self,
        name: &str,
        span: Span,
        value: &Ident,
        fut_type: TokenStream,
    ) -> TokenStream {
        let krate = self.krate;
        let m = self.markers.path(name, span);
        let Some(err) = self.error_ty else {
            if !self.exact {
                return TokenStream::new();
            }
            // `flow!` without `error = Type`: every step fails with the flow's one error type
            // (the first step's). Checked with our message, the future passing through so
            // that a mismatch is reported once.
            let ctx = self.ctx;
            let krate_at = respan(krate, span);
            return quote_spanned! {span=>
                let #value = {
                    #[allow(unused_imports)]
                    use #krate::__private::{SameErrorNo as _, SameErrorYes as _};
                    let __flow_e = #ctx.error_type();
                    let __flow_check =
                        (&#krate::__private::error_probe(&#fut_type, __flow_e)).flow_same_error();
                    #krate_at::__private::same_error::<_, #m, _, _>(__flow_e, #value, __flow_check)
                };
            };
        };
        let krate_at = respan(krate, span);
        quote_spanned! {span=>
            let #value = {
                #[allow(unused_imports)]
                use #krate::__private::{ConvertsNo as _, ConvertsYes as _};
                let __flow_check =
                    (&#krate::__private::Probe(&#fut_type, ::core::marker::PhantomData::<#err>)).flow_converts();
                #krate_at::__private::converts::<#err, #m, _, _>(#value, __flow_check)
            };
        }
    }

    /// In a durable workflow: a check, with our message and at the step, that the step's
    /// output can be stored. `fut_type` is a `PhantomData` of the step's future type.
    fn stored(&self, name: &str, span: Span, value: &Ident, fut_type: TokenStream) -> TokenStream {
        if !self.durable {
            return TokenStream::new();
        }
        let krate = self.krate;
        let ctx = self.ctx;
        let m = self.markers.path(name, span);
        let krate_at = respan(krate, span);
        quote_spanned! {span=>
            let #value = {
                #[allow(unused_imports)]
                use #krate::__private::{StoredNo as _, StoredYes as _};
                let __flow_e = #ctx.error_type();
                let __flow_t = #fut_type;
                let __flow_check =
                    (&#krate::__private::error_probe(&__flow_t, __flow_e)).flow_stored();
                #krate_at::__private::stored_output::<_, #m, _, _>(
                    #krate::__private::ok_type(&__flow_t, __flow_e),
                    #value,
                    __flow_check,
                )
            };
        }
    }

    /// An undo (`compensate = undo`) or recovery step (`catch(recover)`) named by a path: a
    /// check, with our message at its name, that it takes `value` (the step's output, or its
    /// failure), rebinding `value` to what passes through (see `checks::undo_input`). When the
    /// check fails, the value has no type, so the call does not report a mismatch as well (one
    /// that would point at the whole macro). Closures are not probed: their parameter types
    /// are inferred from the call.
    fn takes(&self, func: &Expr, step: &str, value: &Ident, check: &str) -> TokenStream {
        let Expr::Path(p) = func else {
            return TokenStream::new();
        };
        let Some(last) = p.path.segments.last() else {
            return TokenStream::new();
        };
        let krate = self.krate;
        let span = syn::spanned::Spanned::span(func);
        let f_m = self.markers.path(&last.ident.to_string(), span);
        let s_m = self.markers.path(step, span);
        let krate_at = respan(krate, span);
        let check = Ident::new(check, span);
        quote_spanned! {span=>
            let #value = {
                #[allow(unused_imports)]
                use #krate::__private::{TakesNo as _, TakesYes as _};
                let __flow_check = (&#krate::__private::probe_edge(&#func, &#value)).flow_takes();
                #krate_at::__private::#check::<_, #f_m, #s_m, _>(#value, __flow_check)
            };
        }
    }

    /// The expression (a block) that runs the step and yields `Result<T, StepError<E>>`.
    pub(crate) fn step(
        &self,
        node: u32,
        name: &str,
        recovery: Option<u32>,
        policy: &Policy,
        call: &Call<'_>,
        span: Span,
    ) -> TokenStream {
        let krate = self.krate;
        let ctx = self.ctx;
        let id = self.node(node);
        let r = Ident::new("__flow_r", Span::mixed_site());
        let f = Ident::new("__flow_f", Span::mixed_site());
        let m = Ident::new("__flow_m", Span::mixed_site());
        let mk = Ident::new("__flow_mk", Span::mixed_site());
        let step_with = self.method("step_with");
        let step_timeout = self.method("step_timeout");
        let step = self.method("step");
        let catch = self.method("catch");
        let mut out = TokenStream::new();

        if !policy.retry.is_empty() {
            // Every attempt needs its own arguments: evaluate them once, clone per attempt.
            let mut hoisted = Vec::new();
            // The copy is bound before it is passed: its type is the argument's own, not one
            // inferred from the step's parameter, so an argument of the wrong type is reported
            // once, at the argument, as rustc reports it in a call without `retry`.
            let copy = |value: &Ident, at: Span| {
                let m = self.markers.path(name, at);
                let c = Ident::new("__flow_copy", Span::mixed_site().located_at(at));
                quote_spanned! {at=> {
                    #[allow(unused_imports)]
                    use #krate::__private::{CloneNo as _, CloneYes as _};
                    let #c = #krate::__private::retry_arg::<#m, _, _>(
                        &#value,
                        (&#krate::__private::Probe(&#value, ::core::marker::PhantomData::<()>)).flow_clone(),
                    );
                    #c
                }}
            };
            let cloned = self.call_with(call, |i, a| {
                let arg = format_ident!("__flow_a{}", i, span = Span::mixed_site());
                let a_span = syn::spanned::Spanned::span(a);
                hoisted.push(quote_spanned!(a_span=> let #arg = #a;));
                copy(&arg, a_span)
            });
            // `flow!`: the step's one argument is the value on the incoming edge.
            // Checked at the step's own token (`span`, the user's; the rebound step function's
            // span is the macro's, which rustc would report at the whole `flow!`).
            let cloned = match call {
                Call::Input { input, func } => {
                    let m = self.markers.path(name, span);
                    let c = quote_spanned! {span=> {
                        #[allow(unused_imports)]
                        use #krate::__private::{CloneNo as _, CloneYes as _};
                        #krate::__private::retry_input::<#m, _, _>(
                            &#input,
                            (&#krate::__private::Probe(&#input, ::core::marker::PhantomData::<()>)).flow_clone(),
                        )
                    }};
                    let fspan = syn::spanned::Spanned::span(func);
                    quote_spanned!(fspan=> #func(#c))
                }
                _ => cloned,
            };
            let fut = self.child(cloned);
            // Retry rules without a per-attempt timeout, outside durable workflows: the
            // engine's leaner loop (`step_retry`), whose future is about half the size.
            let run = if policy.timeout.is_none() && !self.durable {
                let rules = policy.to_retry_rules(krate);
                quote_spanned!(span=> #ctx.step_retry(#id, #rules, #mk))
            } else {
                let pol = policy.to_step_policy(krate);
                quote_spanned!(span=> #ctx.#step_with(#id, #pol, #mk))
            };
            out.extend(quote_spanned! {span=>
                #(#hoisted)*
                let #mk = || #fut;
            });
            // The marker comes after the check: when the check fails, nothing that follows
            // reports the same problem again.
            out.extend(self.converts(
                name,
                span,
                &mk,
                quote!(#krate::__private::made_future_type(&#mk)),
            ));
            out.extend(self.stored(
                name,
                span,
                &mk,
                quote!(#krate::__private::made_future_type(&#mk)),
            ));
            out.extend(quote_spanned! {span=>
                let #m = #krate::__private::output_of_make(&#mk);
                let #r = #run.await;
            });
        } else if let Some(t) = policy.timeout {
            let fut = self.child(self.call_with(call, |_, a| quote!(#a)));
            let t = crate::duration::to_tokens(t);
            out.extend(quote_spanned! {span=>
                let #f = #fut;
            });
            out.extend(self.converts(name, span, &f, quote!(#krate::__private::future_type(&#f))));
            out.extend(self.stored(name, span, &f, quote!(#krate::__private::future_type(&#f))));
            out.extend(quote_spanned! {span=>
                let #m = #krate::__private::output_of(&#f);
                let #r = #ctx.#step_timeout(#id, #t, #f).await;
            });
        } else {
            let fut = self.child(self.call_with(call, |_, a| quote!(#a)));
            out.extend(quote_spanned! {span=>
                let #f = #fut;
            });
            out.extend(self.converts(name, span, &f, quote!(#krate::__private::future_type(&#f))));
            out.extend(self.stored(name, span, &f, quote!(#krate::__private::future_type(&#f))));
            out.extend(quote_spanned! {span=>
                let #m = #krate::__private::output_of(&#f);
                let #r = #ctx.#step(#id, #f).await;
            });
        }

        if let (Some(c), Some(rec)) = (&policy.catch, recovery) {
            let rec_id = self.node(rec);
            let recover = &c.recover;
            let e = Ident::new("__flow_e", Span::mixed_site());
            // One predicate shape with retry: `when` sees the step's own error `&E` (and
            // catches only errors it accepts); `on` picks failures by kind.
            let when = match (&c.when, c.on) {
                (Some(w), _) => quote!(#ctx.catch_when(#w)),
                (None, Some(on)) => {
                    let kind = match on {
                        "errors" => quote!(Errors),
                        "timeouts" => quote!(Timeouts),
                        "panics" => quote!(Panics),
                        _ => quote!(Any),
                    };
                    quote!(#ctx.catch_on(#krate::policy::CatchOn::#kind))
                }
                (None, None) => quote!(|_| true),
            };
            let check = self.takes(recover, name, &e, "recover_input");
            let recover_call = self.exact(quote!((#recover)(#e)));
            out.extend(quote! {
                let #r = #ctx.#catch(#r, #when, #rec_id, |#e| { #check #recover_call }).await;
            });
        }

        if let Some(undo) = &policy.compensate {
            let o = Ident::new("__flow_o", Span::mixed_site());
            let check = self.takes(undo, name, &o, "undo_input");
            let undo_fn = if self.exact {
                let pe = Ident::new("__flow_pe", Span::mixed_site());
                quote!({
                    let #pe = #ctx.error_type();
                    move |#o| { #check #krate::__private::typed(#pe, (#undo)(#o)) }
                })
            } else if check.is_empty() {
                quote!(#undo)
            } else {
                quote!(move |#o| { #check (#undo)(#o) })
            };
            match policy.to_undo_policy(krate) {
                None => out.extend(quote! {
                    let #r = #ctx.compensate(#id, #r, #undo_fn);
                }),
                Some(limits) => out.extend(quote! {
                    let #r = #ctx.compensate_with(#id, #r, #undo_fn, #limits);
                }),
            }
        }
        if self.marker {
            quote!({ #out (#r, #m) })
        } else {
            quote!({ #out let _ = #m; #r })
        }
    }
}

/// `tokens` (a path such as the runtime's `::flow`), every token of them at `span`.
///
/// A check whose function returns a projection (`A::Checked`) is called through a path at the
/// step: rustc reports an unmet check's bound at the step, and the projection it cannot
/// normalize at the span of the function's path; a path that starts with the macro's `::flow`
/// spans the whole `flow!`, so the same error would be reported there a second time.
pub(crate) fn respan(tokens: &TokenStream, span: Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|mut t| {
            if let proc_macro2::TokenTree::Group(g) = &t {
                let mut n = proc_macro2::Group::new(g.delimiter(), respan(&g.stream(), span));
                n.set_span(span);
                t = proc_macro2::TokenTree::Group(n);
            } else {
                t.set_span(span);
            }
            t
        })
        .collect()
}
