//! The routing snapshot: routes, pools and TCP routes, built from a [`TableSpec`] and swapped
//! whole. Requests and connections hold the `Arc<Pool>` they started with, so a swap never
//! disturbs them.

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::pool::{Endpoint, Pool, PoolSpec, PoolStatus};
use crate::route::{RouteSpec, Router};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpRouteSpec {
    /// Name of the TCP listener whose connections go to `pool`.
    pub listener: String,
    pub pool: String,
    /// Send a PROXY protocol v2 header with the client's address to the upstream.
    pub send_proxy_protocol: bool,
}

/// Everything the data path routes by. Validated by the caller (the node's config checks):
/// a route may name a pool that does not exist, and then answers 503 like an empty pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSpec {
    pub routes: Vec<RouteSpec>,
    pub pools: Vec<PoolSpec>,
    pub tcp_routes: Vec<TcpRouteSpec>,
    /// Public port of the HTTPS listener, for redirects; `None` disables redirects.
    pub https_port: Option<u16>,
}

/// An endpoint whose health checker must start, with its pool's name.
pub(crate) type Checker = (Arc<Endpoint>, Arc<str>);

#[derive(Debug, Default)]
pub(crate) struct Table {
    pub router: Router,
    pub pools: HashMap<Arc<str>, Arc<Pool>>,
    pub tcp: HashMap<String, TcpRouteSpec>,
    pub https_port: Option<u16>,
    pub spec: TableSpec,
}

impl Table {
    /// Also returns the endpoints whose health checker must be started.
    pub fn build(spec: TableSpec, previous: &Table, metrics: &Metrics) -> (Table, Vec<Checker>) {
        let mut checkers = Vec::new();
        let pools = spec
            .pools
            .iter()
            .map(|p| {
                let old = previous.pools.get(p.name.as_str()).map(|a| &**a);
                let mut new = Vec::new();
                let pool = Pool::build(p, old, metrics.pool(&p.name), &mut new);
                checkers.extend(new.into_iter().map(|e| (e, pool.name.clone())));
                (pool.name.clone(), Arc::new(pool))
            })
            .collect();
        let table = Table {
            router: Router::new(&spec.routes),
            pools,
            tcp: spec
                .tcp_routes
                .iter()
                .map(|t| (t.listener.clone(), t.clone()))
                .collect(),
            https_port: spec.https_port,
            spec,
        };
        (table, checkers)
    }

    pub fn pool_status(&self, now: u64) -> Vec<PoolStatus> {
        let mut v: Vec<PoolStatus> = self.pools.values().map(|p| p.status(now)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
