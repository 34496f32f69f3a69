//! The dispatch index: answers "what is the best job this agent may take
//! now" in time that does not grow with the number of blocked jobs.
//!
//! It owns the capacities (every concurrency limit), the classes of waiting
//! jobs, and two levels of ordered lanes. It knows nothing of runs, leases,
//! timeouts or the log; the scheduler tells it what changed.
//!
//! - A **capacity** is one limit with a use count: a queue's action
//!   concurrency, a queue's run concurrency, or one value of a tag rule.
//! - Waiting jobs that share a queue, a required label set and the same
//!   class-level capacities (tag rules, and the run gate while their run is
//!   not active) form a **class**, kept in dispatch order. A class is
//!   dispatchable while none of its capacities is full.
//! - Each (queue, label set) has a **queue lane**: the heads of its
//!   dispatchable classes. While the queue is open (not paused, action
//!   concurrency not full) the lane publishes its best head into the
//!   **pool lane** of every (pool, label set) the queue is bound to.
//! - An agent looks only at the first entry of each pool lane it is
//!   compatible with.
//!
//! A capacity that fills removes its classes (or its queue) from the lanes at
//! once, so dispatch never skips blocked jobs one by one: its cost is in the
//! number of lanes an agent sees, and the logarithm of what they hold.
//!
//! *Architecture invariant:* the index holds no job data beyond dispatch
//! keys; everything in it can be rebuilt from the scheduler's tables.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

use crate::model::{AgentId, JobId, Pair, Seq, TagMatch, TagRule};
use crate::sched::intern::Interner;

pub(crate) type QueueId = u32;
pub(crate) type PoolId = u32;
pub(crate) type LabelSetId = u32;
pub(crate) type TagSetId = u32;
pub(crate) type CapacityId = u32;
pub(crate) type ClassId = u32;
type QueueLaneId = u32;
type PoolLaneId = u32;

/// A job's place in dispatch order within its queue: priority (higher
/// first), then position (the sequence of its run's submission or of its
/// last priority change), then upload order within the run, then job id.
/// Field order is comparison order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey {
    rank: u32,
    pub position: Seq,
    pub upload: u32,
    pub job: JobId,
}

impl JobKey {
    pub fn new(priority: i32, position: Seq, upload: u32, job: JobId) -> JobKey {
        JobKey {
            rank: priority_rank(priority),
            position,
            upload,
            job,
        }
    }

    pub fn priority(&self) -> i32 {
        rank_priority(self.rank)
    }
}

/// Maps a priority to a rank that sorts ascending in descending priority.
fn priority_rank(priority: i32) -> u32 {
    !((priority as u32) ^ 0x8000_0000)
}

fn rank_priority(rank: u32) -> i32 {
    ((!rank) ^ 0x8000_0000) as i32
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CapacityKind {
    /// At most N jobs of the queue running.
    Action(QueueId),
    /// At most N runs of the queue active.
    Runs(QueueId),
    /// At most N running jobs matching the rule (and, per-value, this value).
    Tag { rule: u32, value: Option<String> },
}

#[derive(Debug)]
pub(crate) struct Capacity {
    pub(crate) kind: CapacityKind,
    pub(crate) limit: Option<u32>,
    pub(crate) used: u32,
    /// The classes this capacity gates (empty for action capacities, which
    /// gate their queue).
    classes: Vec<ClassId>,
}

impl Capacity {
    pub(crate) fn is_full(&self) -> bool {
        self.limit.is_some_and(|limit| self.used >= limit)
    }
}

#[derive(Debug)]
struct Class {
    lane: QueueLaneId,
    tag_capacities: Box<[CapacityId]>,
    run_gate: Option<CapacityId>,
    jobs: BTreeSet<JobKey>,
    /// How many of `tag_capacities` and `run_gate` are full.
    full_count: u32,
}

#[derive(Debug)]
struct IndexQueue {
    rank: u32,
    paused: bool,
    pools: Vec<PoolId>,
    action: CapacityId,
    runs: CapacityId,
    lanes: Vec<QueueLaneId>,
    classes: Vec<ClassId>,
}

#[derive(Debug)]
struct QueueLane {
    queue: QueueId,
    labels: LabelSetId,
    heads: BTreeSet<(JobKey, ClassId)>,
    /// The head this lane has put into its pool lanes, if any.
    published: Option<JobKey>,
    /// The pool lanes of (each pool of the queue, `labels`).
    pool_lanes: Vec<PoolLaneId>,
}

#[derive(Debug)]
struct PoolLane {
    pool: PoolId,
    labels: LabelSetId,
    entries: BTreeSet<(u32, JobKey, QueueId)>,
}

#[derive(Debug, Default)]
struct IndexAgent {
    present: bool,
    pools: Vec<PoolId>,
    labels: LabelSetId,
    lanes: Vec<PoolLaneId>,
}

/// What makes a class: its queue, required label set, tag capacities and
/// run gate. Jobs that agree on all four are blocked by the same things.
type ClassKey = (QueueId, LabelSetId, Box<[CapacityId]>, Option<CapacityId>);

#[derive(Debug)]
pub(crate) struct DispatchIndex {
    pub(crate) pools: Interner<String>,
    pub(crate) label_sets: Interner<Box<[Pair]>>,
    pub(crate) tag_sets: Interner<Box<[Pair]>>,
    rules: Vec<TagRule>,
    capacities: Vec<Capacity>,
    tag_capacity_ids: FxHashMap<(u32, Option<String>), CapacityId>,
    /// The tag capacities of each tag set under the current rules, filled on
    /// first use.
    tag_set_capacities: Vec<Option<Box<[CapacityId]>>>,
    classes: Vec<Class>,
    class_ids: FxHashMap<ClassKey, ClassId>,
    class_cache: FxHashMap<(QueueId, LabelSetId, TagSetId, Option<CapacityId>), ClassId>,
    queues: Vec<IndexQueue>,
    queue_lanes: Vec<QueueLane>,
    queue_lane_ids: FxHashMap<(QueueId, LabelSetId), QueueLaneId>,
    pool_lanes: Vec<PoolLane>,
    pool_lane_ids: FxHashMap<(PoolId, LabelSetId), PoolLaneId>,
    agents: Vec<IndexAgent>,
    /// Queue lanes with a published head: none means no agent can take
    /// anything, whoever asks.
    published_count: usize,
    /// Set whenever a head is published: an agent that found nothing before
    /// may find something now.
    pub(crate) work_appeared: bool,
}

impl DispatchIndex {
    pub(crate) fn new() -> DispatchIndex {
        let mut index = DispatchIndex {
            pools: Interner::new(),
            label_sets: Interner::new(),
            tag_sets: Interner::new(),
            rules: Vec::new(),
            capacities: Vec::new(),
            tag_capacity_ids: FxHashMap::default(),
            tag_set_capacities: Vec::new(),
            classes: Vec::new(),
            class_ids: FxHashMap::default(),
            class_cache: FxHashMap::default(),
            queues: Vec::new(),
            queue_lanes: Vec::new(),
            queue_lane_ids: FxHashMap::default(),
            pool_lanes: Vec::new(),
            pool_lane_ids: FxHashMap::default(),
            agents: Vec::new(),
            published_count: 0,
            work_appeared: false,
        };
        // Label set 0 is the empty set, so jobs without labels share one id.
        let empty = index.label_sets.intern(&Box::default());
        assert_eq!(empty, 0);
        index
    }

    /// Forgets every capacity, class and lane, keeping the interners (ids
    /// held by jobs stay valid). The scheduler then adds everything again.
    pub(crate) fn clear_matching(&mut self, rules: Vec<TagRule>) {
        self.rules = rules;
        self.capacities.clear();
        self.tag_capacity_ids.clear();
        self.tag_set_capacities.clear();
        self.classes.clear();
        self.class_ids.clear();
        self.class_cache.clear();
        self.queues.clear();
        self.queue_lanes.clear();
        self.queue_lane_ids.clear();
        self.pool_lanes.clear();
        self.pool_lane_ids.clear();
        for agent in &mut self.agents {
            agent.lanes.clear();
        }
        self.published_count = 0;
        self.work_appeared = true;
    }

    pub(crate) fn rules(&self) -> &[TagRule] {
        &self.rules
    }

    // ---- queues -------------------------------------------------------

    pub(crate) fn add_queue(
        &mut self,
        priority: i32,
        pools: Vec<PoolId>,
        action_limit: Option<u32>,
        run_limit: Option<u32>,
        paused: bool,
    ) -> QueueId {
        let queue = self.queues.len() as QueueId;
        let action = self.add_capacity(CapacityKind::Action(queue), action_limit);
        let runs = self.add_capacity(CapacityKind::Runs(queue), run_limit);
        self.queues.push(IndexQueue {
            rank: priority_rank(priority),
            paused,
            pools,
            action,
            runs,
            lanes: Vec::new(),
            classes: Vec::new(),
        });
        queue
    }

    pub(crate) fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub(crate) fn set_queue_priority(&mut self, queue: QueueId, priority: i32) {
        let rank = priority_rank(priority);
        if self.queues[queue as usize].rank == rank {
            return;
        }
        self.withdraw_queue(queue);
        self.queues[queue as usize].rank = rank;
        self.publish_queue(queue);
    }

    pub(crate) fn set_queue_pools(&mut self, queue: QueueId, pools: Vec<PoolId>) {
        if self.queues[queue as usize].pools == pools {
            return;
        }
        self.withdraw_queue(queue);
        self.queues[queue as usize].pools = pools;
        for i in 0..self.queues[queue as usize].lanes.len() {
            let lane = self.queues[queue as usize].lanes[i];
            self.connect_queue_lane(lane);
        }
        self.publish_queue(queue);
    }

    pub(crate) fn set_queue_paused(&mut self, queue: QueueId, paused: bool) {
        self.queues[queue as usize].paused = paused;
        self.publish_queue(queue);
    }

    pub(crate) fn queue_action_capacity(&self, queue: QueueId) -> CapacityId {
        self.queues[queue as usize].action
    }

    pub(crate) fn queue_runs_capacity(&self, queue: QueueId) -> CapacityId {
        self.queues[queue as usize].runs
    }

    pub(crate) fn queue_is_open(&self, queue: QueueId) -> bool {
        let q = &self.queues[queue as usize];
        !q.paused && !self.capacities[q.action as usize].is_full()
    }

    fn withdraw_queue(&mut self, queue: QueueId) {
        for i in 0..self.queues[queue as usize].lanes.len() {
            let lane = self.queues[queue as usize].lanes[i];
            self.set_published(lane, None);
        }
    }

    fn publish_queue(&mut self, queue: QueueId) {
        for i in 0..self.queues[queue as usize].lanes.len() {
            let lane = self.queues[queue as usize].lanes[i];
            self.publish(lane);
        }
    }

    // ---- capacities ---------------------------------------------------

    fn add_capacity(&mut self, kind: CapacityKind, limit: Option<u32>) -> CapacityId {
        let id = self.capacities.len() as CapacityId;
        self.capacities.push(Capacity {
            kind,
            limit,
            used: 0,
            classes: Vec::new(),
        });
        id
    }

    pub(crate) fn capacity(&self, capacity: CapacityId) -> &Capacity {
        &self.capacities[capacity as usize]
    }

    pub(crate) fn set_limit(&mut self, capacity: CapacityId, limit: Option<u32>) {
        let was_full = self.capacities[capacity as usize].is_full();
        self.capacities[capacity as usize].limit = limit;
        self.on_fullness(capacity, was_full);
    }

    pub(crate) fn acquire(&mut self, capacity: CapacityId) {
        let was_full = self.capacities[capacity as usize].is_full();
        self.capacities[capacity as usize].used += 1;
        self.on_fullness(capacity, was_full);
    }

    pub(crate) fn release(&mut self, capacity: CapacityId) {
        let was_full = self.capacities[capacity as usize].is_full();
        let used = &mut self.capacities[capacity as usize].used;
        assert!(
            *used > 0,
            "capacity {capacity} released more often than acquired"
        );
        *used -= 1;
        self.on_fullness(capacity, was_full);
    }

    /// Acquires every tag capacity of a running job's tag set.
    pub(crate) fn acquire_tags(&mut self, tag_set: TagSetId) {
        self.for_each_tag_capacity(tag_set, DispatchIndex::acquire);
    }

    pub(crate) fn release_tags(&mut self, tag_set: TagSetId) {
        self.for_each_tag_capacity(tag_set, DispatchIndex::release);
    }

    /// Calls `change` on each tag capacity of a tag set, by index: the
    /// change may reshape the lanes, so no borrow of the list is held.
    fn for_each_tag_capacity(
        &mut self,
        tag_set: TagSetId,
        change: fn(&mut DispatchIndex, CapacityId),
    ) {
        self.ensure_tag_set_capacities(tag_set);
        let count = self.cached_tag_capacities(tag_set).len();
        for i in 0..count {
            let capacity = self.cached_tag_capacities(tag_set)[i];
            change(self, capacity);
        }
    }

    /// The tag capacities of a tag set already in use (a running job's).
    pub(crate) fn cached_tag_capacities(&self, tag_set: TagSetId) -> &[CapacityId] {
        self.tag_set_capacities
            .get(tag_set as usize)
            .and_then(|c| c.as_deref())
            .expect("tag capacities of a tag set in use are cached")
    }

    pub(crate) fn capacities(&self) -> &[Capacity] {
        &self.capacities
    }

    pub(crate) fn tag_capacities(&mut self, tag_set: TagSetId) -> &[CapacityId] {
        self.ensure_tag_set_capacities(tag_set);
        self.tag_set_capacities[tag_set as usize]
            .as_deref()
            .unwrap()
    }

    fn ensure_tag_set_capacities(&mut self, tag_set: TagSetId) {
        let slot = tag_set as usize;
        if self.tag_set_capacities.len() <= slot {
            self.tag_set_capacities.resize(slot + 1, None);
        }
        if self.tag_set_capacities[slot].is_some() {
            return;
        }
        let tags = self.tag_sets.get(tag_set).clone();
        let mut capacities = Vec::new();
        for (rule_index, rule) in self.rules.clone().iter().enumerate() {
            let Some((_, value)) = tags.iter().find(|(key, _)| *key == rule.key) else {
                continue;
            };
            let value = match &rule.matches {
                TagMatch::AnyValue => None,
                TagMatch::Value(wanted) if wanted == value => None,
                TagMatch::Value(_) => continue,
                TagMatch::EachValue => Some(value.clone()),
            };
            let key = (rule_index as u32, value);
            let capacity = match self.tag_capacity_ids.get(&key) {
                Some(&capacity) => capacity,
                None => {
                    let kind = CapacityKind::Tag {
                        rule: key.0,
                        value: key.1.clone(),
                    };
                    let capacity = self.add_capacity(kind, Some(rule.limit));
                    self.tag_capacity_ids.insert(key, capacity);
                    capacity
                }
            };
            capacities.push(capacity);
        }
        capacities.sort_unstable();
        self.tag_set_capacities[slot] = Some(capacities.into_boxed_slice());
    }

    fn on_fullness(&mut self, capacity: CapacityId, was_full: bool) {
        let is_full = self.capacities[capacity as usize].is_full();
        if was_full == is_full {
            return;
        }
        match self.capacities[capacity as usize].kind {
            CapacityKind::Action(queue) => self.publish_queue(queue),
            CapacityKind::Runs(_) | CapacityKind::Tag { .. } => {
                for i in 0..self.capacities[capacity as usize].classes.len() {
                    let class = self.capacities[capacity as usize].classes[i];
                    let before = self.entry(class);
                    let full_count = &mut self.classes[class as usize].full_count;
                    if is_full {
                        *full_count += 1;
                    } else {
                        *full_count -= 1;
                    }
                    self.refresh(class, before);
                }
            }
        }
    }

    // ---- classes and waiting jobs -------------------------------------

    /// The class of a waiting job. `run_gate` is the run-concurrency
    /// capacity its run must pass, while the run is not yet active.
    pub(crate) fn class_for(
        &mut self,
        queue: QueueId,
        labels: LabelSetId,
        tag_set: TagSetId,
        run_gate: Option<CapacityId>,
    ) -> ClassId {
        if let Some(&class) = self.class_cache.get(&(queue, labels, tag_set, run_gate)) {
            return class;
        }
        let tag_capacities: Box<[CapacityId]> = self.tag_capacities(tag_set).into();
        let key = (queue, labels, tag_capacities.clone(), run_gate);
        let class = match self.class_ids.get(&key) {
            Some(&class) => class,
            None => self.add_class(queue, labels, tag_capacities, run_gate, key),
        };
        self.class_cache
            .insert((queue, labels, tag_set, run_gate), class);
        class
    }

    fn add_class(
        &mut self,
        queue: QueueId,
        labels: LabelSetId,
        tag_capacities: Box<[CapacityId]>,
        run_gate: Option<CapacityId>,
        key: ClassKey,
    ) -> ClassId {
        let class = self.classes.len() as ClassId;
        let lane = self.queue_lane(queue, labels);
        let mut full_count = 0;
        for &capacity in tag_capacities.iter().chain(run_gate.iter()) {
            let capacity = &mut self.capacities[capacity as usize];
            capacity.classes.push(class);
            full_count += u32::from(capacity.is_full());
        }
        self.classes.push(Class {
            lane,
            tag_capacities,
            run_gate,
            jobs: BTreeSet::new(),
            full_count,
        });
        self.queues[queue as usize].classes.push(class);
        self.class_ids.insert(key, class);
        class
    }

    pub(crate) fn insert_waiting(&mut self, class: ClassId, key: JobKey) {
        let before = self.entry(class);
        let inserted = self.classes[class as usize].jobs.insert(key);
        assert!(inserted, "{} inserted twice into class {class}", key.job);
        self.refresh(class, before);
    }

    pub(crate) fn remove_waiting(&mut self, class: ClassId, key: JobKey) {
        let before = self.entry(class);
        let removed = self.classes[class as usize].jobs.remove(&key);
        assert!(removed, "{} is not in class {class}", key.job);
        self.refresh(class, before);
    }

    pub(crate) fn class_run_gate(&self, class: ClassId) -> Option<CapacityId> {
        self.classes[class as usize].run_gate
    }

    /// The full capacities that hold a class back.
    pub(crate) fn class_blockers(&self, class: ClassId) -> Vec<&Capacity> {
        let class = &self.classes[class as usize];
        class
            .tag_capacities
            .iter()
            .chain(class.run_gate.iter())
            .map(|&c| &self.capacities[c as usize])
            .filter(|c| c.is_full())
            .collect()
    }

    /// How many waiting jobs of the queue come before `key`.
    pub(crate) fn rank_in_queue(&self, queue: QueueId, key: JobKey) -> u64 {
        self.queues[queue as usize]
            .classes
            .iter()
            .map(|&class| self.classes[class as usize].jobs.range(..key).count() as u64)
            .sum()
    }

    /// The head a class offers its lane: its first job, while no capacity
    /// of it is full.
    fn entry(&self, class: ClassId) -> Option<JobKey> {
        let class = &self.classes[class as usize];
        if class.full_count == 0 {
            class.jobs.first().copied()
        } else {
            None
        }
    }

    fn refresh(&mut self, class: ClassId, before: Option<JobKey>) {
        let after = self.entry(class);
        if before == after {
            return;
        }
        let lane = self.classes[class as usize].lane;
        let heads = &mut self.queue_lanes[lane as usize].heads;
        if let Some(key) = before {
            let removed = heads.remove(&(key, class));
            assert!(removed, "class {class} head missing from its lane");
        }
        if let Some(key) = after {
            heads.insert((key, class));
        }
        self.publish(lane);
    }

    // ---- lanes --------------------------------------------------------

    fn queue_lane(&mut self, queue: QueueId, labels: LabelSetId) -> QueueLaneId {
        if let Some(&lane) = self.queue_lane_ids.get(&(queue, labels)) {
            return lane;
        }
        let lane = self.queue_lanes.len() as QueueLaneId;
        self.queue_lanes.push(QueueLane {
            queue,
            labels,
            heads: BTreeSet::new(),
            published: None,
            pool_lanes: Vec::new(),
        });
        self.queue_lane_ids.insert((queue, labels), lane);
        self.queues[queue as usize].lanes.push(lane);
        self.connect_queue_lane(lane);
        lane
    }

    /// Points a queue lane at the pool lanes of its queue's pools.
    fn connect_queue_lane(&mut self, lane: QueueLaneId) {
        assert!(self.queue_lanes[lane as usize].published.is_none());
        let queue = self.queue_lanes[lane as usize].queue;
        let labels = self.queue_lanes[lane as usize].labels;
        let pools = self.queues[queue as usize].pools.clone();
        let pool_lanes = pools
            .iter()
            .map(|&pool| self.pool_lane(pool, labels))
            .collect();
        self.queue_lanes[lane as usize].pool_lanes = pool_lanes;
    }

    fn pool_lane(&mut self, pool: PoolId, labels: LabelSetId) -> PoolLaneId {
        if let Some(&lane) = self.pool_lane_ids.get(&(pool, labels)) {
            return lane;
        }
        let lane = self.pool_lanes.len() as PoolLaneId;
        self.pool_lanes.push(PoolLane {
            pool,
            labels,
            entries: BTreeSet::new(),
        });
        self.pool_lane_ids.insert((pool, labels), lane);
        for agent in 0..self.agents.len() {
            if self.agent_fits(agent, pool, labels) {
                self.agents[agent].lanes.push(lane);
            }
        }
        lane
    }

    fn agent_fits(&self, agent: usize, pool: PoolId, labels: LabelSetId) -> bool {
        let agent = &self.agents[agent];
        agent.present
            && agent.pools.contains(&pool)
            && labels_subset(
                self.label_sets.get(labels),
                self.label_sets.get(agent.labels),
            )
    }

    fn publish(&mut self, lane: QueueLaneId) {
        let queue = self.queue_lanes[lane as usize].queue;
        let wanted = if self.queue_is_open(queue) {
            self.queue_lanes[lane as usize]
                .heads
                .first()
                .map(|&(key, _)| key)
        } else {
            None
        };
        self.set_published(lane, wanted);
    }

    fn set_published(&mut self, lane: QueueLaneId, wanted: Option<JobKey>) {
        let lane_ref = &self.queue_lanes[lane as usize];
        let old = lane_ref.published;
        if old == wanted {
            return;
        }
        let queue = lane_ref.queue;
        let rank = self.queues[queue as usize].rank;
        for &pool_lane in &lane_ref.pool_lanes {
            let entries = &mut self.pool_lanes[pool_lane as usize].entries;
            if let Some(key) = old {
                let removed = entries.remove(&(rank, key, queue));
                assert!(
                    removed,
                    "queue lane {lane} entry missing from pool lane {pool_lane}"
                );
            }
            if let Some(key) = wanted {
                entries.insert((rank, key, queue));
            }
        }
        match (old, wanted) {
            (None, Some(_)) => self.published_count += 1,
            (Some(_), None) => self.published_count -= 1,
            _ => {}
        }
        if wanted.is_some() {
            self.work_appeared = true;
        }
        self.queue_lanes[lane as usize].published = wanted;
    }

    // ---- agents -------------------------------------------------------

    pub(crate) fn set_agent(&mut self, agent: AgentId, pools: Vec<PoolId>, labels: LabelSetId) {
        let slot = agent.0 as usize;
        if self.agents.len() <= slot {
            self.agents.resize_with(slot + 1, IndexAgent::default);
        }
        self.agents[slot] = IndexAgent {
            present: true,
            pools,
            labels,
            lanes: Vec::new(),
        };
        let lanes = (0..self.pool_lanes.len())
            .filter(|&lane| {
                let lane = &self.pool_lanes[lane];
                self.agent_fits(slot, lane.pool, lane.labels)
            })
            .map(|lane| lane as PoolLaneId)
            .collect();
        self.agents[slot].lanes = lanes;
        self.work_appeared = true;
    }

    pub(crate) fn set_agent_absent(&mut self, agent: AgentId) {
        let agent = &mut self.agents[agent.0 as usize];
        agent.present = false;
        agent.lanes.clear();
    }

    /// The best job the agent may take now, if any.
    pub(crate) fn best_for(&self, agent: AgentId) -> Option<JobKey> {
        let mut best: Option<&(u32, JobKey, QueueId)> = None;
        for &lane in &self.agents.get(agent.0 as usize)?.lanes {
            if let Some(entry) = self.pool_lanes[lane as usize].entries.first() {
                if best.is_none_or(|best| entry < best) {
                    best = Some(entry);
                }
            }
        }
        best.map(|&(_, key, _)| key)
    }

    pub(crate) fn anything_published(&self) -> bool {
        self.published_count > 0
    }

    /// Whether any present agent could ever take jobs of this queue with
    /// these labels (ignoring how busy it is).
    pub(crate) fn has_agent_for(&self, queue: QueueId, labels: LabelSetId) -> bool {
        let pools = &self.queues[queue as usize].pools;
        (0..self.agents.len()).any(|agent| {
            pools
                .iter()
                .any(|&pool| self.agent_fits(agent, pool, labels))
        })
    }

    /// Checks the index against itself: every class's full count, every
    /// lane's heads and every published entry. Costs a full scan; for tests
    /// and debug builds.
    pub(crate) fn check(&self) {
        for (id, class) in self.classes.iter().enumerate() {
            let full = class
                .tag_capacities
                .iter()
                .chain(class.run_gate.iter())
                .filter(|&&c| self.capacities[c as usize].is_full())
                .count() as u32;
            assert_eq!(class.full_count, full, "class {id} full count");
            let head = self.entry(id as ClassId);
            let lane = &self.queue_lanes[class.lane as usize];
            if let Some(key) = head {
                assert!(
                    lane.heads.contains(&(key, id as ClassId)),
                    "class {id} head not in lane"
                );
            }
            assert_eq!(
                lane.heads
                    .iter()
                    .filter(|(_, c)| *c == id as ClassId)
                    .count(),
                usize::from(head.is_some()),
                "class {id} has a stale head in its lane"
            );
        }
        let mut published = 0;
        for (id, lane) in self.queue_lanes.iter().enumerate() {
            let wanted = if self.queue_is_open(lane.queue) {
                lane.heads.first().map(|&(key, _)| key)
            } else {
                None
            };
            assert_eq!(
                lane.published, wanted,
                "queue lane {id} publishes a stale head"
            );
            let rank = self.queues[lane.queue as usize].rank;
            for &pool_lane in &lane.pool_lanes {
                if let Some(key) = wanted {
                    assert!(self.pool_lanes[pool_lane as usize]
                        .entries
                        .contains(&(rank, key, lane.queue)));
                }
            }
            published += usize::from(wanted.is_some());
        }
        assert_eq!(published, self.published_count);
        let entries: usize = self.pool_lanes.iter().map(|lane| lane.entries.len()).sum();
        let expected: usize = self
            .queue_lanes
            .iter()
            .filter(|lane| lane.published.is_some())
            .map(|lane| lane.pool_lanes.len())
            .sum();
        assert_eq!(entries, expected, "pool lanes hold stale entries");
        for (id, agent) in self.agents.iter().enumerate() {
            let fitting = (0..self.pool_lanes.len())
                .filter(|&lane| {
                    let lane = &self.pool_lanes[lane];
                    self.agent_fits(id, lane.pool, lane.labels)
                })
                .count();
            assert_eq!(agent.lanes.len(), fitting, "agent {id} lanes");
        }
    }

    /// Every waiting job in the index, for checks against the scheduler.
    pub(crate) fn waiting_count(&self) -> usize {
        self.classes.iter().map(|class| class.jobs.len()).sum()
    }

    pub(crate) fn class_contains(&self, class: ClassId, key: JobKey) -> bool {
        self.classes
            .get(class as usize)
            .is_some_and(|c| c.jobs.contains(&key))
    }
}

/// Whether every pair of `needed` is in `offered`. Both are sorted by key
/// with unique keys.
pub(crate) fn labels_subset(needed: &[Pair], offered: &[Pair]) -> bool {
    needed.iter().all(|(key, value)| {
        offered
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .is_ok_and(|i| offered[i].1 == *value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_rank_orders_higher_priorities_first() {
        let priorities = [i32::MAX, 100, 1, 0, -1, -100, i32::MIN];
        for pair in priorities.windows(2) {
            assert!(priority_rank(pair[0]) < priority_rank(pair[1]), "{pair:?}");
        }
        for p in priorities {
            assert_eq!(rank_priority(priority_rank(p)), p);
        }
    }
}
