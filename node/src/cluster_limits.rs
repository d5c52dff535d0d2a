//! Cluster-wide window limits over the node mesh (`scope: region |
//! cluster` on `limit-count` and `limit-req`, ADR 0035): the
//! [`MeshAuthority`] that settles a limit key's credit with the key's
//! owner, the mesh handler that serves the owner side from this node's
//! [`CreditLedger`], the owner choice (rendezvous hashing of limit id and
//! key over the live members of the scope that have a mesh link), the
//! hand-over to a new owner (reports of what every node holds), the fair
//! share and the `weir_limit_scope_*` series.
//!
//! It does not own the credit arithmetic (`weir_limits::credit` and
//! `weir_limits::ledger`), the mesh transport (`weir-mesh`) or membership
//! (`weir-cluster`). [`ClusterLimits`] exists from the first config build,
//! before the cluster starts, and is attached to the cluster once it runs.
//!
//! Without the mesh (no `cluster` section, or no cluster secret) a scoped
//! limit is not unlimited: its stores fall back to the fair share of one
//! node, `limit / members of the scope` (the whole limit when the node is
//! not clustered), which the node says once per limit in its log and
//! counts in `weir_limit_scope_fallback_windows`.
//!
//! The wire message (kind [`KIND_LIMIT_CREDIT`]) is JSON with a version,
//! at most [`MAX_MESSAGE`] bytes, every field checked where it enters; a
//! bad one gets an error answer and is counted
//! (`weir_limit_scope_messages_refused`), never a panic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_cluster::membership::{MemberState, Membership};
use weir_limits::credit::{CreditConfig, CreditCounters, CreditStats, FairShare};
use weir_limits::ledger::{HeldReport, LedgerConfig};
use weir_limits::store::{Grant, SettleError, Usage};
use weir_limits::{
    CounterSpec, CounterStore, CounterStoreProvider, CreditAuthority, CreditLedger, LimitId,
    LocalProvider, Scale, WindowPolicy,
};
use weir_mesh::Mesh;
use weir_observability::metrics::Metrics;

/// The mesh request kind of credit messages.
pub const KIND_LIMIT_CREDIT: u16 = 14;
/// The message version this node speaks.
pub const VERSION: u8 = 1;
/// Largest credit message, in bytes.
pub const MAX_MESSAGE: usize = 512 * 1024;
/// Longest limit owner or plugin name in a message.
const MAX_NAME: usize = 256;
/// Longest wait for an owner's answer (the settle timeout τ of ADR 0035).
const SETTLE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a new owner waits for reports before it grants anyway; kept
/// below τ so a request waiting on it is answered in time.
const LEARN_TIMEOUT: Duration = Duration::from_millis(350);
/// How often the scope's members and links are looked at.
const WATCH: Duration = Duration::from_millis(100);
/// Reports per hand-over message at most.
const REPORTS_PER_MESSAGE: usize = 200;

/// Where a limit's count is shared (`scope` of `limit-count` and
/// `limit-req`).
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// This node alone (the default).
    #[default]
    Node,
    /// The live members of this node's region.
    Region,
    /// All live members.
    Cluster,
}

impl Scope {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Node => "node",
            Scope::Region => "region",
            Scope::Cluster => "cluster",
        }
    }

    fn index(self) -> Option<usize> {
        match self {
            Scope::Node => None,
            Scope::Region => Some(0),
            Scope::Cluster => Some(1),
        }
    }
}

/// The shared scopes, in [`Scope::index`] order.
const SCOPES: [Scope; 2] = [Scope::Region, Scope::Cluster];

/// What [`ClusterLimits`] is attached to once the cluster runs.
struct Link {
    node_id: String,
    mesh: Option<Mesh>,
    membership: Arc<Membership>,
}

/// One shared scope's state on this node.
struct ScopeState {
    scope: Scope,
    /// This node's fallback share: 1 / members of the scope.
    share: FairShare,
    /// What this node grants from as an owner: reachable / all members.
    grant_scale: AtomicU64,
    /// Live members of the scope with a mesh link (this node included),
    /// sorted: the owner candidates.
    candidates: RwLock<Vec<String>>,
    /// Members of the scope (not left).
    members: AtomicU64,
    ledger: Mutex<CreditLedger>,
    stores: Mutex<Vec<(LimitId, Weak<CreditCounters>)>>,
    /// Stores of the scope that settle elsewhere (`store: redis`): in the
    /// metrics, never in the hand-over reports.
    external: Mutex<Vec<(LimitId, Weak<CreditCounters>)>>,
    owner_changes: AtomicU64,
    /// Reports received from a peer before this node saw the change that
    /// made it an owner: replayed into the new ledger.
    early: Mutex<Vec<(u64, String, Vec<HeldReport>)>>,
}

impl ScopeState {
    fn new(scope: Scope) -> ScopeState {
        ScopeState {
            scope,
            share: FairShare::new(Scale::FULL),
            grant_scale: AtomicU64::new(Scale::FULL.ppm()),
            candidates: RwLock::default(),
            members: AtomicU64::new(1),
            ledger: Mutex::new(CreditLedger::new(ledger_config())),
            stores: Mutex::default(),
            external: Mutex::default(),
            owner_changes: AtomicU64::new(0),
            early: Mutex::default(),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, CreditLedger> {
        lock(&self.ledger)
    }

    fn candidates(&self) -> Vec<String> {
        self.candidates
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The stores settling over the mesh (what a hand-over reports).
    fn live_stores(&self) -> Vec<(LimitId, Arc<CreditCounters>)> {
        live(&self.stores)
    }

    /// Every store of the scope, the mesh's and Redis's (for metrics).
    fn all_stores(&self) -> Vec<(LimitId, Arc<CreditCounters>)> {
        let mut all = live(&self.stores);
        all.extend(live(&self.external));
        all
    }
}

fn live(
    stores: &Mutex<Vec<(LimitId, Weak<CreditCounters>)>>,
) -> Vec<(LimitId, Arc<CreditCounters>)> {
    let mut s = lock(stores);
    s.retain(|(_, w)| w.strong_count() > 0);
    s.iter()
        .filter_map(|(id, w)| Some((id.clone(), w.upgrade()?)))
        .collect()
}

fn ledger_config() -> LedgerConfig {
    LedgerConfig {
        learn_timeout_us: u64::try_from(LEARN_TIMEOUT.as_micros()).unwrap_or(u64::MAX),
        ..LedgerConfig::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The cluster-wide limits of one node: see the module documentation.
pub struct ClusterLimits {
    link: RwLock<Option<Arc<Link>>>,
    scopes: [ScopeState; 2],
    /// Limits whose fallback without the mesh was logged.
    logged: Mutex<HashSet<LimitId>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Cumulative values already added to counter series.
    seen: Mutex<HashMap<(String, &'static str, &'static str), u64>>,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            link: RwLock::default(),
            scopes: SCOPES.map(ScopeState::new),
            logged: Mutex::default(),
            refused: Mutex::default(),
            seen: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for ClusterLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLimits").finish_non_exhaustive()
    }
}

/// Opens the stores of one shared scope: credit stores settling through a
/// [`MeshAuthority`]; node-local ones where no runtime runs (a config
/// check that never serves).
pub struct ScopeProvider {
    scope: Scope,
    limits: Arc<ClusterLimits>,
}

impl ScopeProvider {
    /// The provider of `scope`'s stores.
    pub fn new(limits: Arc<ClusterLimits>, scope: Scope) -> ScopeProvider {
        ScopeProvider { scope, limits }
    }
}

impl CounterStoreProvider for ScopeProvider {
    fn open(&self, id: &LimitId, spec: &CounterSpec) -> Arc<dyn CounterStore> {
        let (Some(i), Ok(rt)) = (self.scope.index(), tokio::runtime::Handle::try_current()) else {
            return LocalProvider.open(id, spec);
        };
        let st = &self.limits.scopes[i];
        let authority = Arc::new(MeshAuthority {
            scope: self.scope,
            limits: self.limits.clone(),
        });
        let cfg = CreditConfig {
            timeout: SETTLE_TIMEOUT,
            ..CreditConfig::default()
        };
        let store = Arc::new(CreditCounters::new(
            id.clone(),
            spec,
            authority,
            st.share.clone(),
            cfg,
            &rt,
        ));
        // Kept (weakly) for the reports to a new owner and the metrics.
        lock(&st.stores).push((id.clone(), Arc::downgrade(&store)));
        store
    }
}

/// A [`CreditAuthority`] that settles with the key's owner over the mesh
/// (or this node's own ledger when it is the owner).
pub struct MeshAuthority {
    scope: Scope,
    limits: Arc<ClusterLimits>,
}

/// The owner of `key` of limit `id` among `candidates`.
fn owner_of<'a>(candidates: &'a [String], id: &LimitId, key: &str) -> Option<&'a String> {
    let k = weir_cluster::owner::key(&[&id.to_string(), key]);
    weir_cluster::owner::owners(&k, candidates, 1)
        .first()
        .copied()
}

impl MeshAuthority {
    fn state(&self) -> &ScopeState {
        &self.limits.scopes[usize::from(self.scope == Scope::Cluster)]
    }

    /// The link and the key's owner, or why there is none.
    fn route(&self, id: &LimitId, key: &str) -> Result<(Arc<Link>, String), SettleError> {
        let link = self.limits.link();
        let Some(link) = link.filter(|l| l.mesh.is_some()) else {
            if lock(&self.limits.logged).insert(id.clone()) {
                tracing::warn!(
                    limit = %id,
                    scope = self.scope.as_str(),
                    "limit scope needs the node mesh (a cluster with a secret); this node admits its fair share of the limit"
                );
            }
            return Err(SettleError::Unreachable("the node mesh is off".into()));
        };
        let cands = self.state().candidates();
        let owner = owner_of(&cands, id, key).map_or_else(|| link.node_id.clone(), Clone::clone);
        Ok((link, owner))
    }

    async fn ask(&self, link: &Link, owner: &str, op: Op) -> Result<Bytes, SettleError> {
        let Some(mesh) = &link.mesh else {
            return Err(SettleError::Unreachable("the node mesh is off".into()));
        };
        let body = serde_json::to_vec(&Message {
            v: VERSION,
            scope: self.scope,
            op,
        })
        .map_err(|e| SettleError::Refused(e.to_string()))?;
        mesh.request(owner, KIND_LIMIT_CREDIT, body.into(), SETTLE_TIMEOUT)
            .await
            .map_err(|e| match e {
                weir_mesh::SendError::Timeout { timeout, .. } => SettleError::Timeout(timeout),
                weir_mesh::SendError::Remote { reason, .. } => SettleError::Refused(reason),
                e => SettleError::Unreachable(e.to_string()),
            })
    }
}

#[async_trait::async_trait]
impl CreditAuthority for MeshAuthority {
    async fn acquire(
        &self,
        id: &LimitId,
        key: &str,
        policy: &WindowPolicy,
        window_start_us: u64,
        want: u64,
    ) -> Result<Grant, SettleError> {
        let (link, owner) = self.route(id, key)?;
        if owner == link.node_id {
            return grant(
                self.state(),
                &link.node_id,
                id,
                key,
                policy,
                window_start_us,
                want,
            )
            .await
            .map_err(SettleError::Refused);
        }
        let op = Op::Acquire(WireAcquire {
            limit: WireId::of(id),
            key: key.into(),
            limit_count: policy.limit,
            window_us: policy.window_us,
            sliding: policy.sliding,
            window_start_us,
            want,
        });
        let answer = self.ask(&link, &owner, op).await?;
        let g: WireGrant = serde_json::from_slice(&answer)
            .map_err(|e| SettleError::Refused(format!("bad grant from `{owner}`: {e}")))?;
        if g.window_start_us != window_start_us || g.units > want {
            return Err(SettleError::Refused(format!(
                "grant from `{owner}` does not match the ask"
            )));
        }
        Ok(Grant {
            window_start_us: g.window_start_us,
            units: g.units,
            consumed: g.consumed,
        })
    }

    async fn release(
        &self,
        id: &LimitId,
        key: &str,
        window_start_us: u64,
        unused: u64,
    ) -> Result<(), SettleError> {
        let (link, owner) = self.route(id, key)?;
        if owner == link.node_id {
            self.state()
                .ledger()
                .release(&link.node_id, id, key, window_start_us, unused);
            return Ok(());
        }
        let op = Op::Release(WireRelease {
            limit: WireId::of(id),
            key: key.into(),
            window_start_us,
            unused,
        });
        self.ask(&link, &owner, op).await.map(|_| ())
    }

    async fn report(&self, _id: &LimitId, _usage: &[Usage]) -> Result<(), SettleError> {
        // Window limits settle by credit; token buckets run at their fair
        // share locally (ADR 0035). Nothing settles by counting yet.
        Err(SettleError::Refused(
            "the mesh settles window limits by credit; it takes no usage reports".into(),
        ))
    }
}

/// Grants from this node's ledger, waiting (up to the learning timeout)
/// while a new owner learns, and from the limit scaled by the share of
/// the scope this node reaches (so two sides of a partition that each
/// elect an owner do not grant the limit twice).
async fn grant(
    st: &ScopeState,
    node: &str,
    id: &LimitId,
    key: &str,
    policy: &WindowPolicy,
    window_start_us: u64,
    want: u64,
) -> Result<Grant, String> {
    let scale = Scale::from_ppm(st.grant_scale.load(Ordering::Relaxed));
    let policy = policy.scaled(scale);
    let deadline = tokio::time::Instant::now() + LEARN_TIMEOUT + Duration::from_millis(20);
    loop {
        let r = st.ledger().grant(
            weir_limits::wall_clock_us(),
            node,
            id,
            key,
            &policy,
            window_start_us,
            want,
        );
        match r {
            Err(weir_limits::ledger::Refusal::Learning { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => return r.map_err(|e| e.to_string()),
        }
    }
}

// === the wire ===

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    v: u8,
    scope: Scope,
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    Acquire(WireAcquire),
    Release(WireRelease),
    Adopt(Vec<WireReport>),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireId {
    owner: String,
    plugin: String,
    config: u64,
}

impl WireId {
    fn of(id: &LimitId) -> WireId {
        WireId {
            owner: id.owner.to_string(),
            plugin: id.plugin.to_string(),
            config: id.config,
        }
    }

    fn check(self) -> Result<LimitId, String> {
        for (field, v) in [("limit.owner", &self.owner), ("limit.plugin", &self.plugin)] {
            if v.is_empty() || v.len() > MAX_NAME {
                return Err(format!("{field}: must be 1 to {MAX_NAME} bytes"));
            }
        }
        Ok(LimitId {
            owner: self.owner.into(),
            plugin: self.plugin.into(),
            config: self.config,
        })
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.len() > weir_limits::store::MAX_KEY_BYTES {
        return Err(format!(
            "key: longer than {} bytes",
            weir_limits::store::MAX_KEY_BYTES
        ));
    }
    Ok(())
}

fn check_window(window_us: u64, window_start_us: u64) -> Result<(), String> {
    if window_us == 0 {
        return Err("window_us: must be at least 1".into());
    }
    if !window_start_us.is_multiple_of(window_us) {
        return Err("window_start_us: not aligned on window_us".into());
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAcquire {
    limit: WireId,
    key: String,
    limit_count: u64,
    window_us: u64,
    sliding: bool,
    window_start_us: u64,
    want: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRelease {
    limit: WireId,
    key: String,
    window_start_us: u64,
    unused: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireReport {
    limit: WireId,
    key: String,
    window_us: u64,
    window_start_us: u64,
    held: u64,
    consumed: u64,
    scope_seen: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireGrant {
    window_start_us: u64,
    units: u64,
    consumed: u64,
}

impl WireReport {
    fn of(r: &HeldReport) -> WireReport {
        WireReport {
            limit: WireId::of(&r.id),
            key: r.key.to_string(),
            window_us: r.window_us,
            window_start_us: r.window_start_us,
            held: r.held,
            consumed: r.consumed,
            scope_seen: r.scope_seen,
        }
    }

    fn check(self) -> Result<HeldReport, String> {
        check_key(&self.key)?;
        check_window(self.window_us, self.window_start_us)?;
        Ok(HeldReport {
            id: self.limit.check()?,
            key: self.key.into(),
            window_us: self.window_us,
            window_start_us: self.window_start_us,
            held: self.held,
            consumed: self.consumed,
            scope_seen: self.scope_seen,
        })
    }
}

/// Why a message was refused, as counted.
fn refusal_reason(e: &str) -> &'static str {
    if e.starts_with("version") {
        "version"
    } else if e.starts_with("oversized") {
        "oversized"
    } else if e.starts_with("scope") {
        "scope"
    } else {
        "malformed"
    }
}

impl ClusterLimits {
    fn link(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// This node's fallback share of `scope` (reachable members over all
    /// members; the whole limit for a node that is not clustered), kept
    /// up to date as membership changes. `None` for `scope: node`.
    pub fn share(&self, scope: Scope) -> Option<FairShare> {
        Some(self.scopes[scope.index()?].share.clone())
    }

    /// Shows `store`, which settles with an authority other than the mesh
    /// (Redis), in the scope's `weir_limit_scope_*` series. It takes no
    /// part in hand-overs.
    pub fn register_external(&self, scope: Scope, id: &LimitId, store: &Arc<CreditCounters>) {
        if let Some(i) = scope.index() {
            lock(&self.scopes[i].external).push((id.clone(), Arc::downgrade(store)));
        }
    }

    /// Attaches the running cluster: registers the mesh handler and starts
    /// watching the scopes' members and links (the task ends when `self`
    /// is dropped).
    pub fn attach(self: &Arc<Self>, membership: Arc<Membership>, mesh: Option<Mesh>) {
        let link = Arc::new(Link {
            node_id: membership.node_id().to_string(),
            mesh: mesh.clone(),
            membership,
        });
        *self
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(link.clone());
        if let Some(mesh) = &mesh {
            let me = Arc::downgrade(self);
            mesh.on_request(KIND_LIMIT_CREDIT, move |m| {
                let me = me.clone();
                async move {
                    let Some(me) = me.upgrade() else {
                        return Err("the node is stopping".to_string());
                    };
                    me.serve(&m.from, &m.body).await.inspect_err(|e| {
                        *lock(&me.refused).entry(refusal_reason(e)).or_default() += 1;
                        tracing::debug!(peer = %m.from, error = %e, "limit credit message refused");
                    })
                }
            });
        } else {
            tracing::warn!(
                "the node mesh is off (no cluster secret): limits with scope region or cluster admit this node's fair share"
            );
        }
        tokio::spawn(watch(Arc::downgrade(self), link));
    }

    /// Serves one credit message from `from`.
    async fn serve(&self, from: &str, body: &[u8]) -> Result<Bytes, String> {
        if body.len() > MAX_MESSAGE {
            return Err(format!(
                "oversized: {} bytes, at most {MAX_MESSAGE}",
                body.len()
            ));
        }
        let msg: Message = serde_json::from_slice(body).map_err(|e| format!("malformed: {e}"))?;
        if msg.v != VERSION {
            return Err(format!("version: {} is not {VERSION}", msg.v));
        }
        let Some(i) = msg.scope.index() else {
            return Err("scope: `node` limits are not shared".into());
        };
        let st = &self.scopes[i];
        let now = weir_limits::wall_clock_us();
        match msg.op {
            Op::Acquire(a) => {
                let id = a.limit.check()?;
                check_key(&a.key)?;
                check_window(a.window_us, a.window_start_us)?;
                let policy = WindowPolicy {
                    limit: a.limit_count,
                    window_us: a.window_us,
                    sliding: a.sliding,
                };
                let g = grant(st, from, &id, &a.key, &policy, a.window_start_us, a.want).await?;
                let w = WireGrant {
                    window_start_us: g.window_start_us,
                    units: g.units,
                    consumed: g.consumed,
                };
                serde_json::to_vec(&w)
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            }
            Op::Release(r) => {
                let id = r.limit.check()?;
                check_key(&r.key)?;
                st.ledger()
                    .release(from, &id, &r.key, r.window_start_us, r.unused);
                Ok(Bytes::new())
            }
            Op::Adopt(reports) => {
                if reports.len() > REPORTS_PER_MESSAGE {
                    return Err(format!(
                        "malformed: {} reports, at most {REPORTS_PER_MESSAGE}",
                        reports.len()
                    ));
                }
                let reports = reports
                    .into_iter()
                    .map(WireReport::check)
                    .collect::<Result<Vec<_>, _>>()?;
                st.ledger().adopt(now, from, &reports);
                let mut early = lock(&st.early);
                early.push((now, from.to_string(), reports));
                if early.len() > 64 {
                    early.remove(0);
                }
                Ok(Bytes::new())
            }
        }
    }

    /// Publishes the `weir_limit_scope_*` series (before a scrape).
    pub fn publish_metrics(&self, m: &Metrics) {
        let held = m.gauge_vec(
            "weir_limit_scope_credit_held",
            "Credit this node holds for shared limits (units), per limit and scope.",
            ["weir_limit", "scope"],
        );
        let reachable = m.gauge_vec(
            "weir_limit_scope_reachable",
            "Members of the scope this node reaches over the mesh, itself included (owner candidates).",
            ["scope"],
        );
        let members = m.gauge_vec(
            "weir_limit_scope_members",
            "Members of the scope this node knows of (not left).",
            ["scope"],
        );
        let decisions = m.counter_vec(
            "weir_limit_scope_decisions",
            "Decisions of shared limits on this node, per limit, scope and outcome (admitted_credit, admitted_ahead, admitted_fair_share, rejected).",
            ["weir_limit", "scope", "outcome"],
        );
        let fallbacks = m.counter_vec(
            "weir_limit_scope_fallback_windows",
            "Key windows of shared limits that fell back to this node's fair share (owner unreachable, refused or mesh off).",
            ["weir_limit", "scope"],
        );
        let rtt = m.counter_vec(
            "weir_limit_scope_sync_rtt_microseconds",
            "Sum of background credit settlement round trips, in microseconds (divide by weir_limit_scope_syncs).",
            ["weir_limit", "scope"],
        );
        let syncs = m.counter_vec(
            "weir_limit_scope_syncs",
            "Background credit settlements answered or failed.",
            ["weir_limit", "scope"],
        );
        let owned = m.gauge_vec(
            "weir_limit_scope_ledger_entries",
            "(limit, key, window) entries in this node's credit ledger: the shared-limit keys it owns.",
            ["scope"],
        );
        let owner_changes = m.counter_vec(
            "weir_limit_scope_owner_changes",
            "Changes of the scope's owner candidates (each moves key owners and starts a hand-over).",
            ["scope"],
        );
        let refused = m.counter_vec(
            "weir_limit_scope_messages_refused",
            "Credit messages from peers refused, by reason (malformed, oversized, version, scope).",
            ["reason"],
        );
        let mut seen = lock(&self.seen);
        let mut bump = |series: &weir_observability::metrics::CounterVec<1>,
                        label: &str,
                        what: &'static str,
                        now: u64| {
            let before = seen.insert((label.to_string(), what, ""), now).unwrap_or(0);
            series.inc_by([label], now.saturating_sub(before));
        };
        for st in &self.scopes {
            let scope = st.scope.as_str();
            let n = st.candidates().len().max(1);
            reachable.set([scope], i64::try_from(n).unwrap_or(i64::MAX));
            owned.set(
                [scope],
                i64::try_from(st.ledger().len()).unwrap_or(i64::MAX),
            );
            members.set(
                [scope],
                i64::try_from(st.members.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            );
            bump(
                &owner_changes,
                scope,
                "owner_changes",
                st.owner_changes.load(Ordering::Relaxed),
            );
        }
        for (reason, n) in lock(&self.refused).iter() {
            bump(&refused, reason, "refused", *n);
        }
        for st in &self.scopes {
            let scope = st.scope.as_str();
            let mut by_limit: BTreeMap<String, (CreditStats, u64)> = BTreeMap::new();
            for (id, s) in st.all_stores() {
                let e = by_limit
                    .entry(format!("{}/{}", id.owner, id.plugin))
                    .or_default();
                let x = s.stats();
                e.0.admitted_credit += x.admitted_credit;
                e.0.admitted_ahead += x.admitted_ahead;
                e.0.admitted_fair_share += x.admitted_fair_share;
                e.0.rejected += x.rejected;
                e.0.fallback_windows += x.fallback_windows;
                e.0.sync_rtt_us += x.sync_rtt_us;
                e.0.grants += x.grants + x.acquire_errors;
                e.1 += s.held();
            }
            for (limit, (x, h)) in by_limit {
                held.set([&limit, scope], i64::try_from(h).unwrap_or(i64::MAX));
                let mut add = |series: &weir_observability::metrics::CounterVec<2>,
                               what: &'static str,
                               now: u64| {
                    let before = seen
                        .insert((format!("{limit}\0{scope}"), what, ""), now)
                        .unwrap_or(0);
                    series.inc_by([&limit, scope], now.saturating_sub(before));
                };
                add(&fallbacks, "fallbacks", x.fallback_windows);
                add(&rtt, "rtt", x.sync_rtt_us);
                add(&syncs, "syncs", x.grants);
                for (outcome, now) in [
                    ("admitted_credit", x.admitted_credit),
                    ("admitted_ahead", x.admitted_ahead),
                    ("admitted_fair_share", x.admitted_fair_share),
                    ("rejected", x.rejected),
                ] {
                    let before = seen
                        .insert(
                            (format!("{limit}\0{scope}\0{outcome}"), "decision", ""),
                            now,
                        )
                        .unwrap_or(0);
                    decisions.inc_by([&limit, scope, outcome], now.saturating_sub(before));
                }
            }
        }
    }
}

/// Watches the scopes' members and mesh links; on a change of a scope's
/// owner candidates, starts a new (learning) ledger and hands what this
/// node holds to the keys' new owners.
async fn watch(me: Weak<ClusterLimits>, link: Arc<Link>) {
    let mut tick = tokio::time::interval(WATCH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(me) = me.upgrade() else { return };
        let members = link.membership.members().await;
        let connected: HashSet<String> = link
            .mesh
            .as_ref()
            .map(|m| m.connected_peers().into_iter().collect())
            .unwrap_or_default();
        let region = members
            .iter()
            .find(|m| m.is_self)
            .map(|m| m.region.clone())
            .unwrap_or_default();
        for st in &me.scopes {
            let in_scope = |r: &str| st.scope == Scope::Cluster || r == region.as_str();
            let all: BTreeSet<&str> = members
                .iter()
                .filter(|m| m.state != MemberState::Left && in_scope(&m.region))
                .map(|m| m.id.as_str())
                .collect();
            let cands: Vec<String> = members
                .iter()
                .filter(|m| m.state == MemberState::Alive && in_scope(&m.region))
                .filter(|m| m.is_self || connected.contains(&m.id))
                .map(|m| m.id.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let n = all.len().max(1) as u64;
            st.members.store(n, Ordering::Relaxed);
            st.share.set(Scale::share(1, n, Scale::ZERO));
            let reach = (cands.len() as u64).clamp(1, n);
            st.grant_scale
                .store(Scale::share(reach, n, Scale::ZERO).ppm(), Ordering::Relaxed);
            if cands != st.candidates() {
                hand_over(st, &link, cands).await;
            }
        }
    }
}

/// The owner candidates of `st` changed to `cands`: a fresh ledger learns
/// what the other candidates hold, and this node sends its own reports to
/// the keys' new owners (an empty report to the others, so they stop
/// waiting for it).
async fn hand_over(st: &ScopeState, link: &Link, cands: Vec<String>) {
    let now = weir_limits::wall_clock_us();
    let peers: Vec<&str> = cands
        .iter()
        .map(String::as_str)
        .filter(|c| *c != link.node_id)
        .collect();
    {
        let mut l = st.ledger();
        *l = CreditLedger::learning(ledger_config(), now, peers.iter().copied());
        // Reports that came before this node saw the change.
        let recent = now.saturating_sub(ledger_config().learn_timeout_us);
        for (at, from, reports) in lock(&st.early).drain(..) {
            if at >= recent && peers.contains(&from.as_str()) {
                l.adopt(now, &from, &reports);
            }
        }
    }
    *st.candidates
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = cands.clone();
    st.owner_changes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(scope = st.scope.as_str(), candidates = ?cands, "limit owners changed; handing over credit reports");
    let mut by_owner: BTreeMap<String, Vec<HeldReport>> =
        cands.iter().map(|c| (c.clone(), Vec::new())).collect();
    for (_, s) in st.live_stores() {
        for r in s.reports() {
            if let Some(o) = owner_of(&cands, &r.id, &r.key) {
                by_owner.entry(o.clone()).or_default().push(r);
            }
        }
    }
    for (owner, reports) in by_owner {
        if owner == link.node_id {
            st.ledger().adopt(now, &owner, &reports);
            continue;
        }
        let Some(mesh) = &link.mesh else { continue };
        let mut chunks: Vec<&[HeldReport]> = reports.chunks(REPORTS_PER_MESSAGE).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let msg = Message {
                v: VERSION,
                scope: st.scope,
                op: Op::Adopt(chunk.iter().map(WireReport::of).collect()),
            };
            let Ok(body) = serde_json::to_vec(&msg) else {
                continue;
            };
            if let Err(e) = mesh
                .request(&owner, KIND_LIMIT_CREDIT, body.into(), SETTLE_TIMEOUT)
                .await
            {
                tracing::debug!(peer = %owner, error = %e, "limit hand-over report not delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[tokio::test]
    async fn bad_messages_get_an_error_and_never_a_panic() {
        let cl = ClusterLimits::default();
        for (body, want) in [
            (msg("not json"), "malformed"),
            (
                msg(r#"{"v":2,"scope":"cluster","op":{"adopt":[]}}"#),
                "version",
            ),
            (msg(r#"{"v":1,"scope":"node","op":{"adopt":[]}}"#), "scope"),
            (
                msg(r#"{"v":1,"scope":"cluster","op":{"adopt":[]},"x":1}"#),
                "malformed",
            ),
            (vec![b' '; MAX_MESSAGE + 1], "oversized"),
        ] {
            let e = cl.serve("peer", &body).await.expect_err("refused");
            assert_eq!(refusal_reason(&e), want, "{e}");
        }
        let id = r#"{"owner":"route:r","plugin":"limit-count","config":1}"#;
        let bad_window = format!(
            r#"{{"v":1,"scope":"cluster","op":{{"acquire":{{"limit":{id},"key":"k","limit_count":10,"window_us":0,"sliding":false,"window_start_us":0,"want":1}}}}}}"#
        );
        let e = cl
            .serve("p", bad_window.as_bytes())
            .await
            .expect_err("zero window");
        assert!(e.contains("window_us"), "{e}");
        let long_key = "k".repeat(weir_limits::store::MAX_KEY_BYTES + 1);
        let bad_key = format!(
            r#"{{"v":1,"scope":"region","op":{{"release":{{"limit":{id},"key":"{long_key}","window_start_us":0,"unused":1}}}}}}"#
        );
        let e = cl
            .serve("p", bad_key.as_bytes())
            .await
            .expect_err("long key");
        assert!(e.starts_with("key"), "{e}");
        let good = format!(
            r#"{{"v":1,"scope":"cluster","op":{{"acquire":{{"limit":{id},"key":"k","limit_count":100,"window_us":1000000,"sliding":false,"window_start_us":5000000,"want":10}}}}}}"#
        );
        let answer = cl.serve("p", good.as_bytes()).await.expect("granted");
        let g: WireGrant = serde_json::from_slice(&answer).expect("grant");
        assert_eq!((g.units, g.consumed), (10, 10));
    }

    #[test]
    fn every_node_picks_the_same_owner_and_a_leaver_moves_only_its_keys() {
        let id = LimitId {
            owner: "route:r".into(),
            plugin: "limit-count".into(),
            config: 7,
        };
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let mut owned_by_c = 0;
        for k in 0..200 {
            let key = format!("k{k}");
            let o3 = owner_of(&three, &id, &key).expect("owner");
            let o2 = owner_of(&two, &id, &key).expect("owner");
            if o3 == "c" {
                owned_by_c += 1;
            } else {
                assert_eq!(o3, o2, "a key not owned by the leaver keeps its owner");
            }
        }
        assert!((30..=110).contains(&owned_by_c), "{owned_by_c}");
    }
}
