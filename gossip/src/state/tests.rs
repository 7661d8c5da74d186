use super::*;
use crate::testing::Rng;

#[test]
fn set_get_prefix_delete() {
    let mut s = ClusterState::new("a");
    s.set("node/a/addr", b"10.0.0.1".to_vec(), 1_000);
    s.set("node/a/draining", b"0".to_vec(), 1_000);
    s.set("nodex", b"other".to_vec(), 1_000);
    let keys: Vec<&str> = s.prefix("node/a/").map(|(k, _)| k).collect();
    assert_eq!(keys, ["node/a/addr", "node/a/draining"]);
    let del = s.delete("node/a/draining", 1_001).unwrap();
    assert_eq!(del.entry.value, None);
    assert_eq!(s.get("node/a/draining"), None);
    assert_eq!(s.prefix("node/a/").count(), 1);
    // Deleting a tombstone or a missing key is a no-op.
    assert!(s.delete("node/a/draining", 1_002).is_none());
    assert!(s.delete("missing", 1_002).is_none());
    assert_eq!(s.len(), 3, "two live entries and one tombstone");
}

#[test]
fn clock_orders_own_writes_after_everything_seen() {
    // b's wall clock is far behind a's; its write after seeing a's must still win.
    let mut a = ClusterState::new("a");
    let mut b = ClusterState::new("b");
    let ua = a.set("k", b"from a".to_vec(), 50_000);
    assert_eq!(b.apply(ua.clone()), Applied::Changed);
    let ub = b.set("k", b"from b".to_vec(), 1_000);
    assert!(ub.entry.version.at > ua.entry.version.at);
    assert_eq!(a.apply(ub), Applied::Changed);
    assert_eq!(a.get("k"), Some(&b"from b"[..]));
    assert_eq!(a.apply(ua), Applied::Stale);
}

#[test]
fn equal_clocks_are_broken_by_writer_id() {
    let mut a = ClusterState::new("a");
    let mut b = ClusterState::new("b");
    let ua = a.set("k", b"a".to_vec(), 1_000);
    let ub = b.set("k", b"b".to_vec(), 1_000);
    assert_eq!(ua.entry.version.at, ub.entry.version.at);
    a.apply(ub);
    b.apply(ua);
    assert_eq!(a.get("k"), Some(&b"b"[..]));
    assert_eq!(a.entries(), b.entries());
}

#[test]
fn newer_term_wins_and_deposed_leader_is_fenced() {
    let mut old = ClusterState::new("old");
    let mut new = ClusterState::new("new");
    let mut reader = ClusterState::new("reader");
    let u1 = old
        .set_as_leader("topology/web", b"v1".to_vec(), 1, 90_000)
        .unwrap();
    reader.apply(u1.clone());
    new.apply(u1);
    // The new leader's clock is behind, its term is not.
    let u2 = new
        .set_as_leader("topology/web", b"v2".to_vec(), 2, 10_000)
        .unwrap();
    assert_eq!(reader.apply(u2.clone()), Applied::Changed);
    assert_eq!(reader.get("topology/web"), Some(&b"v2"[..]));
    // Once it has seen term 2, the old leader cannot write as leader any more.
    old.apply(u2);
    assert_eq!(
        old.set_as_leader("topology/api", b"x".to_vec(), 1, 95_000),
        Err(Fenced {
            term: 1,
            current: 2
        })
    );
    assert!(old.delete_as_leader("topology/web", 1, 95_000).is_err());
    assert!(
        new.set_as_leader("k", vec![], 0, 1).is_err(),
        "term 0 is not a term"
    );
    // A stray write the old leader made before learning about term 2 replicates, but readers
    // of leader data ignore it.
    let mut stray_writer = ClusterState::new("old");
    let stray = stray_writer
        .set_as_leader("topology/api", b"stale".to_vec(), 1, 96_000)
        .unwrap();
    assert_eq!(reader.apply(stray), Applied::Changed);
    let current: Vec<&str> = reader.current_term("topology/").map(|(k, _)| k).collect();
    assert_eq!(current, ["topology/web"]);
    assert_eq!(reader.max_term(), 2);
}

#[test]
fn leader_delete_replicates_as_tombstone() {
    let mut l = ClusterState::new("l");
    let mut r = ClusterState::new("r");
    r.apply(
        l.set_as_leader("acme/token/abc", b"ka".to_vec(), 3, 1_000)
            .unwrap(),
    );
    let del = l
        .delete_as_leader("acme/token/abc", 3, 2_000)
        .unwrap()
        .unwrap();
    assert_eq!(r.apply(del), Applied::Changed);
    assert_eq!(r.get("acme/token/abc"), None);
    assert_eq!(l.delete_as_leader("acme/token/abc", 3, 2_001), Ok(None));
}

#[test]
fn anti_entropy_from_digests_converges_both_ways() {
    let mut a = ClusterState::new("a");
    let mut b = ClusterState::new("b");
    let shared = a.set("shared", b"1".to_vec(), 1_000);
    b.apply(shared);
    // Divergence while partitioned.
    a.set("only-a", b"a".to_vec(), 2_000);
    b.set("only-b", b"b".to_vec(), 2_000);
    b.set("shared", b"2".to_vec(), 3_000);
    a.set("gone", b"x".to_vec(), 2_500);
    a.delete("gone", 2_600);
    // One round: each side sends what the other's digest lacks.
    let to_b = a.newer_than(&b.digest());
    let to_a = b.newer_than(&a.digest());
    assert_eq!(to_b.len(), 2, "only-a and the tombstone of gone");
    assert_eq!(to_a.len(), 2, "only-b and the newer shared");
    to_b.into_iter().for_each(|u| {
        b.apply(u);
    });
    to_a.into_iter().for_each(|u| {
        a.apply(u);
    });
    assert_eq!(a.entries(), b.entries());
    assert_eq!(a.get("shared"), Some(&b"2"[..]));
    assert!(a.newer_than(&b.digest()).is_empty());
}

#[test]
fn gc_drops_only_old_tombstones() {
    let mut s = ClusterState::new("a");
    s.set("live", b"1".to_vec(), 1_000);
    s.set("dead-old", b"1".to_vec(), 1_000);
    s.delete("dead-old", 2_000);
    s.set("dead-new", b"1".to_vec(), 1_000);
    s.delete("dead-new", 9_000);
    assert_eq!(s.gc(10_000, 5_000), 1);
    assert!(s.entry("dead-old").is_none());
    assert!(s.entry("dead-new").is_some());
    assert_eq!(s.get("live"), Some(&b"1"[..]));
}

/// Five writers (two of them successive leaders, the first still writing after it was deposed)
/// make 400 random writes and deletes; six replicas receive every update in their own random
/// order, with duplicates. All replicas end equal, and equal to the writers' merged view.
#[test]
fn replicas_converge_whatever_the_delivery_order() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut writers: Vec<ClusterState> = ["n0", "n1", "n2", "l1", "l2"]
            .iter()
            .map(|id| ClusterState::new(*id))
            .collect();
        let mut updates = Vec::new();
        let mut now = 1_000;
        for _ in 0..400 {
            now += rng.below(3);
            let w = rng.below(5) as usize;
            // The first leader also writes keys nobody else touches: there, the only thing that
            // decides a replica's content is how it treats a deposed leader's late write.
            let key = format!("k{}", rng.below(if w == 3 { 16 } else { 12 }));
            // Writers sometimes hear from others first (their clocks move on).
            if !updates.is_empty() && rng.below(3) == 0 {
                let u: &Update = &updates[rng.below(updates.len() as u64) as usize];
                writers[w].apply(u.clone());
            }
            let skew = rng.below(2_000);
            let u = match (w, rng.below(4)) {
                (3, _) => writers[3]
                    .set_as_leader(&key, vec![w as u8], 1, now + skew)
                    .ok(),
                (4, 0) => writers[4].delete_as_leader(&key, 2, now).ok().flatten(),
                (4, _) => writers[4].set_as_leader(&key, vec![w as u8], 2, now).ok(),
                (_, 0) => writers[w].delete(&key, now + skew),
                _ => Some(writers[w].set(&key, vec![w as u8, rng.below(255) as u8], now + skew)),
            };
            updates.extend(u);
        }
        let replicas: Vec<ClusterState> = (0..6)
            .map(|r| {
                let mut order: Vec<usize> = (0..updates.len()).collect();
                order.extend(
                    (0..updates.len() / 4).map(|_| rng.below(updates.len() as u64) as usize),
                );
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut s = ClusterState::new(format!("r{r}"));
                for i in order {
                    s.apply(updates[i].clone());
                }
                s
            })
            .collect();
        for r in &replicas[1..] {
            assert_eq!(r.entries(), replicas[0].entries(), "seed {seed}");
            assert_eq!(r.max_term(), 2, "seed {seed}");
            let a: Vec<_> = r.current_term("k").collect();
            let b: Vec<_> = replicas[0].current_term("k").collect();
            assert_eq!(a, b, "seed {seed}");
        }
        assert!(
            replicas[0].len() > 5,
            "seed {seed}: too few keys to mean anything"
        );
    }
}

#[test]
fn the_change_counter_moves_only_on_changes() {
    let mut a = ClusterState::new("a");
    let mut b = ClusterState::new("b");
    assert_eq!(a.changes(), 0);
    let u = a.set("k", b"1".to_vec(), 1);
    assert_eq!(a.changes(), 1);
    assert_eq!(b.apply(u.clone()), Applied::Changed);
    assert_eq!(b.changes(), 1);
    assert_eq!(b.apply(u), Applied::Stale);
    assert_eq!(b.changes(), 1, "a stale update changes nothing");
}
