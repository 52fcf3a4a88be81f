//! Workflows stored and named: type-erased workflows (`BoxWorkflow`, `ArcWorkflow`) in a struct
//! field, a `static` and a `Vec`, and a `Registry` that runs them by name.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use flow::dynamic::DynState;
use flow::prelude::*;
use flow::registry::{AnyError, Payload, RegistryError};
use flow::{ArcWorkflow, BoxWorkflow, DynWorkflow, NodeId, Registry, SignalError, Status};

async fn fetch(id: u32) -> Result<String, String> {
    Ok(format!("record {id}"))
}
async fn size(record: String) -> Result<usize, String> {
    Ok(record.len())
}
async fn double(n: u32) -> Result<u32, String> {
    Ok(n * 2)
}
async fn inc(n: u32) -> Result<u32, String> {
    Ok(n + 1)
}
async fn refuse(n: u32) -> Result<u32, String> {
    Err(format!("{n} refused"))
}
/// A step that waits for a signal (through the run it is called in).
async fn wait_note(prefix: u32) -> Result<String, String> {
    let note: String = flow::signal("note")
        .timeout(Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{prefix}: {note}"))
}

#[workflow]
async fn quadruple(n: u32) -> Result<u32, String> {
    let n = double(n).await?;
    double(n).await
}

/// A service keeps its workflow in a field, though a `flow!`'s type cannot be named.
struct Service {
    import: BoxWorkflow<u32, usize, String>,
}

impl Service {
    fn new() -> Self {
        Service {
            import: Box::new(flow! { name = "import"; fetch -> size }),
        }
    }
}

#[tokio::test]
async fn a_flow_in_a_struct_field() {
    let svc = Service::new();
    let runtime = Runtime::new();
    assert_eq!(svc.import.run(&runtime, 7).await.unwrap(), 8);
    // A boxed workflow is a `Workflow`: the runtime runs it as any other.
    assert_eq!(runtime.run(&svc.import, 12).await.unwrap(), 9);
    assert_eq!(svc.import.graph().name, "import");
    assert_eq!(svc.import.name(), "import");
    // Awaited outside a run, `call` runs it with a default runtime.
    assert_eq!(svc.import.call(1).await.unwrap(), 8);
}

static PIPELINE: LazyLock<ArcWorkflow<u32, u32, String>> =
    LazyLock::new(|| Arc::new(flow! { name = "pipeline"; double -> inc }));

#[tokio::test]
async fn a_flow_in_a_static_is_run_and_spawned() {
    let runtime = Runtime::new();
    assert_eq!(PIPELINE.run(&runtime, 4).await.unwrap(), 9);
    let h = PIPELINE.clone().spawn(&runtime, 5);
    assert_eq!(h.await.unwrap(), 11);
    // Or through the runtime: the handle's type names only the types.
    let h: flow::Handle<ArcWorkflow<u32, u32, String>> = runtime.spawn(PIPELINE.clone(), 1);
    assert_eq!(h.await.unwrap(), 3);
    assert_eq!(PIPELINE.fingerprint(), PIPELINE.graph().fingerprint);
}

#[tokio::test]
async fn a_vec_of_different_workflows() {
    let all: Vec<BoxWorkflow<u32, u32, String>> = vec![
        Box::new(flow! { name = "twice"; double -> double }),
        Box::new(flow! { name = "plus_one"; inc }),
        Box::new(flow! { name = "refusing"; inc -> refuse [retry(max_attempts = 2)] }),
    ];
    let runtime = Runtime::new();
    let mut results = Vec::new();
    for w in &all {
        results.push(w.run(&runtime, 10).await.map_err(|e| e.to_string()));
    }
    assert_eq!(results[0], Ok(40));
    assert_eq!(results[1], Ok(11));
    let e = results[2].as_ref().unwrap_err();
    assert!(e.contains("11 refused"), "{e}");
    let names: Vec<_> = all.iter().map(|w| w.name()).collect();
    assert_eq!(names, ["twice", "plus_one", "refusing"]);
}

#[tokio::test]
async fn a_workflow_type_boxed_and_run_as_a_child() {
    let boxed: BoxWorkflow<(u32,), u32, String> = Box::new(Quadruple);
    assert_eq!(boxed.graph().fingerprint, Quadruple::FINGERPRINT);
    assert_eq!(boxed.run(&Runtime::new(), (3,)).await.unwrap(), 12);

    // Inside a step of another run, `call` makes it a child run of that run.
    let shared: ArcWorkflow<(u32,), u32, String> = boxed.into();
    let child = shared.clone();
    let outer = flow! { name = "outer"; |n: u32| child.call((n,)) };
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let runtime = Runtime::default()
        .with_observer(move |e: &flow::Event| seen.lock().unwrap().push(e.clone()));
    assert_eq!(runtime.run(&outer, 2).await.unwrap(), 8);
    let events = events.lock().unwrap();
    let outer_run = events.iter().find(|e| e.workflow == "outer").unwrap().run;
    assert!(
        events
            .iter()
            .any(|e| e.workflow == "Quadruple" && e.parent == Some(outer_run))
    );
}

#[tokio::test(start_paused = true)]
async fn a_spawned_dyn_workflow_shows_its_state() {
    let waiting: ArcWorkflow<u32, String, String> =
        Arc::new(flow! { name = "waiting"; double -> wait_note });
    let h = waiting.clone().spawn(&Runtime::new(), 2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.state().name, "wait_note");
    assert_eq!(h.typed_state(), Some(DynState(h.state().node)));
    h.signal("note", String::from("hi")).unwrap();
    assert_eq!(h.await.unwrap(), "4: hi");
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("quadruple", Quadruple).unwrap();
    r.register("import", flow! { name = "import"; fetch -> size })
        .unwrap();
    r.register("waiting", flow! { name = "waiting"; double -> wait_note })
        .unwrap();
    r.register("refusing", flow! { name = "refusing"; refuse })
        .unwrap();
    r
}

#[tokio::test]
async fn registering_and_listing() {
    let mut r = registry();
    let e = r.register("import", flow! { double }).unwrap_err();
    assert!(matches!(&e, RegistryError::Duplicate { workflow } if workflow == "import"));
    assert_eq!(
        e.to_string(),
        "a workflow named `import` is already registered"
    );
    assert_eq!(
        r.names().collect::<Vec<_>>(),
        ["import", "quadruple", "refusing", "waiting"]
    );
    let q = r.get("quadruple").unwrap();
    assert_eq!(q.name(), "quadruple");
    assert_eq!(q.fingerprint(), Quadruple::FINGERPRINT);
    assert_eq!(q.graph().name, Quadruple::GRAPH.name);
    assert_eq!(q.input_type(), "(u32,)");
    assert_eq!(q.output_type(), "u32");
    assert_eq!(q.error_type(), "alloc::string::String");
    assert!(r.get("nothing").is_none());
    let graphs: Vec<_> = r.graphs().map(|(n, g, fp)| (n, g.name, fp)).collect();
    assert_eq!(
        graphs[1],
        ("quadruple", "Quadruple", Quadruple::FINGERPRINT)
    );
    assert_eq!(graphs.len(), 4);
    // The typed workflow back, when the types are right.
    let typed = q.workflow::<(u32,), u32, String>().unwrap();
    assert_eq!(typed.run(&Runtime::new(), (1,)).await.unwrap(), 4);
    assert!(q.workflow::<u32, u32, String>().is_none());
}

#[tokio::test]
async fn running_by_name() {
    let r = registry();
    let rt = Runtime::new();
    let out = r.run(&rt, "import", Payload::new(42u32)).await.unwrap();
    assert_eq!(out.type_name(), "usize");
    assert_eq!(out.downcast::<usize>().unwrap(), 9);
    let out = r
        .run(&rt, "quadruple", Payload::new((5u32,)))
        .await
        .unwrap();
    assert_eq!(out.downcast::<u32>().unwrap(), 20);

    let e = r
        .run(&rt, "import", Payload::new(String::from("42")))
        .await
        .unwrap_err();
    assert!(matches!(
        &e,
        RegistryError::WrongInput { workflow, expected: "u32", got: "alloc::string::String" }
            if workflow == "import"
    ));
    assert_eq!(
        e.to_string(),
        "workflow `import` takes a `u32`, but was given a `alloc::string::String`"
    );
    // A raw `Box<dyn Any + Send>` is checked too (its type has no name to report).
    let raw: Box<dyn std::any::Any + Send> = Box::new(1i8);
    let e = r.run(&rt, "import", raw.into()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "workflow `import` takes a `u32`, but was given a `an unnamed type`"
    );
    let raw: Box<dyn std::any::Any + Send> = Box::new(3u32);
    let out = r.run(&rt, "import", raw.into()).await.unwrap();
    assert_eq!(out.downcast_ref::<usize>(), Some(&8));

    let e = r.run(&rt, "deploy", Payload::new(1u32)).await.unwrap_err();
    assert_eq!(e.to_string(), "no workflow named `deploy` is registered");

    let e = r
        .run(&rt, "refusing", Payload::new(3u32))
        .await
        .unwrap_err();
    let RegistryError::Failed(e) = e else {
        panic!("expected a failed run, got {e}")
    };
    assert_eq!(e.step(), Some("refuse"));
    let inner: &AnyError = e.step_error().and_then(|s| s.error()).unwrap();
    assert_eq!(inner.downcast_ref::<String>().unwrap(), "3 refused");
    assert_eq!(inner.type_name(), "alloc::string::String");
}

#[tokio::test(start_paused = true)]
async fn spawning_by_name_and_signalling() {
    let r = registry();
    let rt = Runtime::new();
    let h = r.spawn(&rt, "waiting", Payload::new(3u32)).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(h.state().name, "wait_note");
    h.signal("note", String::from("go")).unwrap();
    // Also reachable by id through the runtime.
    assert_eq!(
        rt.signal(h.run_id(), "other", 1u8),
        Ok(()),
        "a live spawned run is listed"
    );
    let out = h.await.unwrap();
    assert_eq!(out.downcast::<String>().unwrap(), "6: go");

    assert!(matches!(
        r.spawn(&rt, "waiting", Payload::new("3")),
        Err(RegistryError::WrongInput { .. })
    ));
    let mut h = r.spawn(&rt, "waiting", Payload::new(1u32)).unwrap();
    h.cancel();
    let e = (&mut h).await.unwrap_err();
    assert!(e.is_cancelled());
    assert_eq!(h.state().status, Status::Cancelled);
    assert_eq!(h.signal("note", 1u8), Err(SignalError::RunFinished));
    let _ = NodeId::START;
}
