//! One poll of the cluster: list the RUNNING tasks, describe only what is new (or due for a
//! health refresh), resolve endpoints through cached task definitions and container
//! instances. A failed call fails the whole poll, so a partial answer never replaces the last
//! good topology.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::api::{ApiError, EcsApi, DESCRIBE_BATCH};
use super::model::{resolve, NetworkMode, ServiceTopology, TaskDefInfo, TaskInfo};

/// Calls per call name: (ok, failed).
pub type CallCounts = BTreeMap<&'static str, (u64, u64)>;

/// A token bucket: `burst` calls at once, then `per_sec` a second. Sans-IO: it says how
/// long to wait; the caller sleeps.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    pub fn new(per_sec: f64, burst: u32) -> Bucket {
        Bucket {
            per_sec,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: None,
        }
    }

    /// Takes a token at `now`; returns how long to wait before using it.
    pub fn take(&mut self, now: Instant) -> Duration {
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.at = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

/// ECS's DescribeTasks and DescribeContainerInstances share a limit of about 20 calls a
/// second: the poller keeps to half of it (10 a second, bursts of 10, so no second sees more
/// than 20), leaving room for deploy tools.
pub const DESCRIBE_PER_SEC: f64 = 10.0;
/// DescribeTaskDefinition (a new leader with 1,000 services describes 1,000 revisions once).
pub const TASKDEF_PER_SEC: f64 = 20.0;

#[derive(Debug)]
pub struct Poller {
    describe: Bucket,
    taskdef: Bucket,
    tasks: HashMap<String, TaskInfo>,
    /// Task definition revisions are immutable: cached for good.
    taskdefs: HashMap<String, TaskDefInfo>,
    /// Container instance ARN -> EC2 instance id, and id -> private address: fixed for the
    /// instance's life.
    instance_of: HashMap<String, String>,
    addresses: HashMap<String, IpAddr>,
    polls: u64,
    /// Every how many polls every known task is described again (health changes).
    pub refresh_every: u64,
    pub calls: CallCounts,
    recent: VecDeque<Instant>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PollResult {
    /// Every service the cluster runs tasks for (not only the routed ones).
    pub services: BTreeMap<String, ServiceTopology>,
    /// Tasks that could not be resolved (logged, shown; the others still route).
    pub problems: Vec<String>,
    /// API calls this poll made.
    pub calls: u64,
}

impl Poller {
    pub fn new(refresh_every: u64) -> Poller {
        Poller {
            describe: Bucket::new(DESCRIBE_PER_SEC, 10),
            taskdef: Bucket::new(TASKDEF_PER_SEC, 40),
            tasks: HashMap::new(),
            taskdefs: HashMap::new(),
            instance_of: HashMap::new(),
            addresses: HashMap::new(),
            polls: 0,
            refresh_every: refresh_every.max(1),
            calls: CallCounts::new(),
            recent: VecDeque::new(),
        }
    }

    async fn pace(bucket: &mut Bucket) {
        let wait = bucket.take(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// API calls in the last minute.
    pub fn calls_last_minute(&mut self) -> usize {
        let horizon = Instant::now() - Duration::from_secs(60);
        while self.recent.front().is_some_and(|t| *t < horizon) {
            self.recent.pop_front();
        }
        self.recent.len()
    }

    fn record<T>(
        &mut self,
        call: &'static str,
        made: &mut u64,
        r: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        *made += 1;
        self.recent.push_back(Instant::now());
        let c = self.calls.entry(call).or_default();
        match &r {
            Ok(_) => c.0 += 1,
            Err(_) => c.1 += 1,
        }
        r
    }

    pub async fn poll<A: EcsApi>(&mut self, api: &A) -> Result<PollResult, ApiError> {
        let mut made = 0;
        let listed = api.list_tasks(None).await;
        let listed = self.record("ecs:ListTasks", &mut made, listed)?;
        let listed: BTreeSet<String> = listed.into_iter().collect();
        self.polls += 1;
        let refresh = self.polls.is_multiple_of(self.refresh_every);
        let stale: Vec<String> = listed
            .iter()
            .filter(|arn| {
                refresh
                    || self
                        .tasks
                        .get(*arn)
                        .is_none_or(|t| t.last_status != "RUNNING")
            })
            .cloned()
            .collect();
        let mut described = HashMap::new();
        for batch in stale.chunks(DESCRIBE_BATCH) {
            Self::pace(&mut self.describe).await;
            let r = api.describe_tasks(batch).await;
            for t in self.record("ecs:DescribeTasks", &mut made, r)? {
                described.insert(t.arn.clone(), t);
            }
        }
        // Tasks gone from the list are stopped or stopping: forget them.
        self.tasks.retain(|arn, _| listed.contains(arn));
        self.tasks.extend(described);

        let missing_defs: BTreeSet<String> = self
            .tasks
            .values()
            .map(|t| t.task_definition.clone())
            .filter(|d| !self.taskdefs.contains_key(d))
            .collect();
        for arn in missing_defs {
            Self::pace(&mut self.taskdef).await;
            let r = api.describe_task_definition(&arn).await;
            let def = self.record("ecs:DescribeTaskDefinition", &mut made, r)?;
            self.taskdefs.insert(arn, def);
        }

        // Container instances of bridge and host tasks whose address is not known yet.
        let needs_instance = |t: &TaskInfo| {
            self.taskdefs
                .get(&t.task_definition)
                .is_some_and(|d| d.network_mode != NetworkMode::Awsvpc)
        };
        let unknown: BTreeSet<String> = self
            .tasks
            .values()
            .filter(|t| needs_instance(t))
            .filter_map(|t| t.container_instance.clone())
            .filter(|ci| !self.instance_of.contains_key(ci))
            .collect();
        let unknown: Vec<String> = unknown.into_iter().collect();
        for batch in unknown.chunks(DESCRIBE_BATCH) {
            Self::pace(&mut self.describe).await;
            let r = api.describe_container_instances(batch).await;
            let found = self.record("ecs:DescribeContainerInstances", &mut made, r)?;
            self.instance_of.extend(found);
        }
        let ids: BTreeSet<String> = self
            .instance_of
            .values()
            .filter(|id| !self.addresses.contains_key(*id))
            .cloned()
            .collect();
        let ids: Vec<String> = ids.into_iter().collect();
        for batch in ids.chunks(DESCRIBE_BATCH) {
            let r = api.instance_addresses(batch).await;
            let found = self.record("ec2:DescribeInstances", &mut made, r)?;
            self.addresses.extend(found);
        }

        let mut result = PollResult {
            calls: made,
            ..PollResult::default()
        };
        let mut newest_rev: HashMap<String, u64> = HashMap::new();
        let mut tasks: Vec<&TaskInfo> = self.tasks.values().collect();
        tasks.sort_by(|a, b| a.arn.cmp(&b.arn));
        for t in tasks {
            let Some(service) = t.service() else {
                continue;
            };
            let topo = result.services.entry(service.to_string()).or_default();
            topo.tasks += 1;
            if !t.routable() {
                continue;
            }
            let def = &self.taskdefs[&t.task_definition];
            let rev = TaskDefInfo::revision(&t.task_definition);
            let newest = newest_rev.entry(service.to_string()).or_insert(0);
            if rev >= *newest {
                *newest = rev;
                topo.labels = def.labels.clone();
            }
            let ip = t
                .container_instance
                .as_ref()
                .and_then(|ci| self.instance_of.get(ci))
                .and_then(|id| self.addresses.get(id))
                .copied();
            match resolve(t, def, ip) {
                Ok(eps) => topo.endpoints.extend(eps),
                Err(e) => result.problems.push(format!("service {service}: {e}")),
            }
        }
        Ok(result)
    }
}

/// Delay before the next poll: the interval after a success, doubling after each failure up
/// to `max`, with jitter (half to full delay) so a recovering API is not hit in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub interval: Duration,
    pub max: Duration,
    pub failures: u32,
}

impl Backoff {
    pub fn new(interval: Duration) -> Backoff {
        Backoff {
            interval,
            max: (interval * 30)
                .max(Duration::from_secs(60))
                .min(Duration::from_secs(300)),
            failures: 0,
        }
    }

    /// `jitter` in [0, 1).
    pub fn next(&mut self, ok: bool, jitter: f64) -> Duration {
        if ok {
            self.failures = 0;
            return self.interval;
        }
        self.failures = self.failures.saturating_add(1);
        let full = self
            .interval
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        // The fourth call at the same instant waits one token's time, the fifth two.
        assert_eq!(b.take(t0), Duration::from_millis(100));
        assert_eq!(b.take(t0), Duration::from_millis(200));
        // A second later the debt is paid and eight tokens are back (capped at the burst).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(t1), Duration::ZERO);
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(t2), Duration::ZERO);
        }
        assert!(b.take(t2) > Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(10));
        assert_eq!(
            b.next(false, 0.999_999),
            Duration::from_secs(20).mul_f64(0.999_999_5)
        );
        assert_eq!(b.next(false, 0.0), Duration::from_secs(20));
        assert_eq!(b.next(false, 0.0), Duration::from_secs(40));
        for _ in 0..40 {
            b.next(false, 0.0);
        }
        assert_eq!(b.next(false, 1.0), b.max);
        assert_eq!(b.max, Duration::from_secs(300));
        assert_eq!(b.next(true, 0.5), Duration::from_secs(10));
        assert_eq!(b.failures, 0);
    }
}
