//! Workflows inside services: `flow!` stages that are closures or method calls on the
//! service's own clients, with zero, one or several arguments.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use flow::prelude::*;

/// A fake database client, as a service would hold one.
#[derive(Default)]
struct Db {
    calls: AtomicU32,
    fail_first: AtomicU32,
}

impl Db {
    async fn fetch(&self, id: u32) -> Result<String, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_first.load(Ordering::SeqCst) > 0 {
            self.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(format!("fetch {id}: busy"));
        }
        Ok(format!("record {id}"))
    }
    async fn size(&self, record: String) -> Result<usize, String> {
        Ok(record.len())
    }
}

async fn store(record: String) -> Result<usize, String> {
    Ok(record.len())
}
async fn ping() -> Result<u32, String> {
    Ok(7)
}
async fn add(a: u32, b: u32) -> Result<u32, String> {
    Ok(a + b)
}
async fn double(n: u32) -> Result<u32, String> {
    Ok(n * 2)
}

struct Service {
    db: Db,
}

impl Service {
    async fn import(&self, id: u32) -> Result<usize, flow::Error<String>> {
        let f = flow! {
            |id| self.db.fetch(id) [retry(max_attempts = 3)]
                -> store
        };
        f.run(id).await
    }

    async fn import_by_method(&self, id: u32) -> Result<usize, flow::Error<String>> {
        let db = &self.db;
        let f = flow! { db.fetch -> self.db.size };
        f.run(id).await
    }
}

#[tokio::test]
async fn a_closure_stage_calls_the_services_client() {
    let svc = Service { db: Db::default() };
    svc.db.fail_first.store(2, Ordering::SeqCst);
    assert_eq!(svc.import(4).await.unwrap(), "record 4".len());
    // Retried as a step: the closure is called once per attempt.
    assert_eq!(svc.db.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_method_stage_on_a_captured_value() {
    let svc = Service { db: Db::default() };
    assert_eq!(svc.import_by_method(12).await.unwrap(), "record 12".len());
}

#[tokio::test]
async fn closures_with_zero_or_several_arguments() {
    // `|| ping()` ignores its input; `|a, b| add(a, b)` takes the pair a parallel group makes.
    let f = flow! { || ping() -> (double & double) -> |a, b| add(a, b) };
    assert_eq!(f.run(()).await.unwrap(), 28);
    let names: Vec<&str> = f.graph().steps().map(|(_, n)| n.name).collect();
    assert_eq!(names, ["ping", "double", "double", "add"]);
}

#[tokio::test]
async fn closure_stages_are_named_and_labelled() {
    let db = Arc::new(Db::default());
    let f = flow! { first: |id| db.fetch(id) -> again: db.size };
    assert_eq!(f.run(1).await.unwrap(), "record 1".len());
    let keys: Vec<&str> = f.graph().nodes.iter().map(|n| n.key).collect();
    assert_eq!(keys, ["start", "end", "first", "again"]);
    // The closure's text is part of the node's fingerprint.
    let g = flow! { first: |id: u32| db.fetch(id + 1) -> again: db.size };
    assert_ne!(
        f.graph()
            .node(f.graph().find("first").unwrap())
            .unwrap()
            .fingerprint,
        g.graph()
            .node(g.graph().find("first").unwrap())
            .unwrap()
            .fingerprint
    );
}

/// A flow that owns what its closures use can be returned and spawned.
fn owned_pipeline(
    db: Arc<Db>,
) -> impl Workflow<Input = u32, Output = usize, Error = String> + 'static {
    flow! { move |id| { let db = Arc::clone(&db); async move { db.fetch(id).await } } -> store }
}

#[tokio::test]
async fn a_flow_with_move_closures_is_static() {
    let db = Arc::new(Db::default());
    let handle = Runtime::new().spawn(owned_pipeline(Arc::clone(&db)), 5);
    assert_eq!(handle.await.unwrap(), "record 5".len());
    assert_eq!(db.calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------- #[workflow] methods and generics

/// What a remediation needs from the cluster: the real client or a fake.
pub trait Fleet: Send + Sync + 'static {
    /// Drains a node.
    fn drain(&self, node: u32) -> impl std::future::Future<Output = Result<u32, String>> + Send;
    /// Brings a node back.
    fn rejoin(&self, node: u32) -> impl std::future::Future<Output = Result<u32, String>> + Send;
}

/// A fake fleet that records what it was asked.
#[derive(Default, Clone)]
pub struct FakeFleet {
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Fleet for FakeFleet {
    async fn drain(&self, node: u32) -> Result<u32, String> {
        self.log.lock().unwrap().push(format!("drain {node}"));
        Ok(node)
    }
    async fn rejoin(&self, node: u32) -> Result<u32, String> {
        self.log.lock().unwrap().push(format!("rejoin {node}"));
        Ok(node + 1)
    }
}

/// A generic workflow: tested here with the fake.
#[workflow]
async fn cycle<F: Fleet>(fleet: F, node: u32) -> Result<u32, String> {
    let n = fleet.drain(node).await?;
    fleet.rejoin(n).await
}

#[tokio::test]
async fn a_generic_workflow_runs_with_a_fake() {
    let fake = FakeFleet::default();
    assert_eq!(cycle(fake.clone(), 3).await.unwrap(), 4);
    assert_eq!(*fake.log.lock().unwrap(), ["drain 3", "rejoin 3"]);
    // The workflow type is generic too; its graph is the same for every type.
    let n = Runtime::new()
        .run(&Cycle::<FakeFleet>::new(), (fake.clone(), 5))
        .await
        .unwrap();
    assert_eq!(n, 6);
    let steps: Vec<&str> = Cycle::<FakeFleet>::GRAPH
        .steps()
        .map(|(_, s)| s.name)
        .collect();
    assert_eq!(steps, ["drain", "rejoin"]);
}

/// A service that owns its workflows.
pub struct Remediator<F> {
    fleet: F,
    retries: u32,
}

impl<F: Fleet> Remediator<F> {
    /// Drains and rejoins a node, through the service's own fleet client.
    #[workflow]
    pub async fn remediate(&self, node: u32) -> Result<u32, String> {
        let n = self.fleet.drain(node).await?;
        if self.retries > 0 {
            #[retry(max_attempts = 3)]
            self.fleet.rejoin(n).await
        } else {
            Ok(n)
        }
    }

    /// The same, owning a handle to the service (so it can be spawned).
    #[workflow(timeout = "1m")]
    pub async fn remediate_owned(self: Arc<Self>, node: u32) -> Result<u32, String> {
        self.fleet.rejoin(node).await
    }

    /// An associated function that names `Self`.
    #[workflow]
    pub async fn build(fleet: F) -> Result<u32, String> {
        let me = Self { fleet, retries: 0 };
        me.fleet.drain(1).await
    }
}

#[tokio::test]
async fn a_workflow_can_be_a_method_of_its_service() {
    let svc = Remediator {
        fleet: FakeFleet::default(),
        retries: 1,
    };
    // Awaited like the method it is...
    assert_eq!(svc.remediate(7).await.unwrap(), 8);
    // ...or run through a runtime: the workflow value carries the receiver.
    let wf = svc.remediate_workflow();
    assert_eq!(Runtime::new().run(&wf, (9,)).await.unwrap(), 10);
    let g = wf.graph();
    assert_eq!(g.name, "Remediate");
    assert!(g.find("if").is_some() && g.find("rejoin").is_some());
    assert_eq!(
        *svc.fleet.log.lock().unwrap(),
        ["drain 7", "rejoin 7", "drain 9", "rejoin 9"]
    );
    drop(wf);

    let svc = Arc::new(svc);
    let handle = Runtime::new().spawn(Arc::clone(&svc).remediate_owned_workflow(), (1,));
    assert_eq!(handle.await.unwrap(), 2);
    assert_eq!(Arc::clone(&svc).remediate_owned(2).await.unwrap(), 3);
    assert_eq!(
        Remediator::<FakeFleet>::build(FakeFleet::default())
            .await
            .unwrap(),
        1
    );
}
