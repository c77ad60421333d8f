//! Learned stickiness through the scheduler's public API: clients return to their backend
//! across reloads that add and remove backends, `single_active` moves everyone at once and
//! only when it must, and a table carried by a dump comes back under new ids.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ringlb_config::{Listener, Stickiness, StickinessKey};
use ringlb_scheduler::{ActiveChange, KeyFilter, Remembered, Scheduler, Snapshot, Tried};

const NOW: u32 = 1_000;

/// A TCP listener over `backends` (127.0.0.1 ports) with `algorithm` and a stickiness
/// mapping (YAML flow text), parsed as the config file would be.
fn listener(algorithm: &str, stickiness: &str, backends: &[u16]) -> Listener {
    let mut yaml = format!(
        "listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n    algorithm: {algorithm}\n    stickiness: {stickiness}\n    backends:\n"
    );
    for port in backends {
        yaml.push_str(&format!("      - addr: 127.0.0.1:{port}\n"));
    }
    ringlb_config::parse(&yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .listeners
        .remove(0)
}

fn client(n: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n)), 40_000)
}

fn label(snapshot: &Snapshot, index: usize) -> String {
    snapshot.backends()[index].spec.label.clone()
}

fn index_of(snapshot: &Snapshot, label: &str) -> usize {
    snapshot
        .backends()
        .iter()
        .position(|b| b.spec.label == label)
        .expect("a backend of that label")
}

/// One connection of `peer` as the data plane makes it: the sticky target first, else a
/// normal pick, then remembered. Returns the backend's label and whether it was a hit.
fn connect(s: &Scheduler, peer: SocketAddr, random: u64, now: u32) -> (String, bool) {
    let snapshot = s.snapshot();
    let target = snapshot.sticky_target(peer, random, now);
    let mut tried = Tried::new();
    let (index, _guard) = snapshot
        .pick_and_acquire_preferring(peer.ip(), random, &mut tried, target)
        .expect("a backend");
    assert_ne!(
        snapshot.sticky_remember(peer, index, now),
        Remembered::Skipped
    );
    (label(&snapshot, index), target == Some(index))
}

#[test]
fn clients_keep_their_backend_while_backends_are_added_and_removed() {
    let first = listener("source_hash", "{}", &[1, 2, 3]);
    let s = Scheduler::for_listener(&first);
    let clients: Vec<SocketAddr> = (0..200).map(client).collect();
    let before: Vec<String> = clients.iter().map(|&c| connect(&s, c, 0, NOW).0).collect();

    // A fourth backend: plain source_hash would move some clients; stickiness keeps all.
    let more = listener("source_hash", "{}", &[1, 2, 3, 4]);
    let plain = Scheduler::for_listener(&more);
    plain.set_stickiness(None);
    let moved = clients
        .iter()
        .zip(&before)
        .filter(|(c, b)| {
            let snap = plain.snapshot();
            let i = snap.pick(c.ip(), 0, &Tried::new()).expect("a backend");
            label(&snap, i) != **b
        })
        .count();
    assert!(moved > 0, "adding a backend moves some source_hash clients");
    s.reconfigure_from(&more);
    for (c, b) in clients.iter().zip(&before) {
        assert_eq!(connect(&s, *c, 0, NOW + 1), (b.clone(), true));
    }
    // The new backend removed again, and then one of the first three: only the clients of
    // the removed backend move.
    s.reconfigure_from(&first);
    let fewer = listener("source_hash", "{}", &[1, 3]);
    s.reconfigure_from(&fewer);
    for (c, b) in clients.iter().zip(&before) {
        let (now, hit) = connect(&s, *c, 0, NOW + 2);
        if b == "127.0.0.1:2" {
            assert!(!hit && now != *b);
        } else {
            assert_eq!((now, hit), (b.clone(), true));
        }
    }
}

#[test]
fn a_backend_that_cannot_take_the_client_is_replaced_and_the_entry_follows() {
    let s = Scheduler::for_listener(&listener("round_robin", "{}", &[1, 2]));
    let (first, _) = connect(&s, client(1), 0, NOW);
    let snapshot = s.snapshot();
    let i = index_of(&snapshot, &first);
    snapshot.backends()[i].state.set_up(false);
    s.health_changed();
    let (second, hit) = connect(&s, client(1), 0, NOW + 1);
    assert!(!hit);
    assert_ne!(second, first);
    // Back up: the client stays where it went last.
    snapshot.backends()[i].state.set_up(true);
    s.health_changed();
    assert_eq!(connect(&s, client(1), 0, NOW + 2), (second, true));
}

#[test]
fn entries_expire() {
    let s = Scheduler::for_listener(&listener("round_robin", "{expire: 10s}", &[1, 2]));
    let (first, _) = connect(&s, client(1), 0, NOW);
    assert_eq!(connect(&s, client(1), 0, NOW + 9), (first.clone(), true));
    // Unused for 10 s after its last use: forgotten; round robin moves on.
    let (_, hit) = connect(&s, client(1), 0, NOW + 19);
    assert!(!hit);
}

#[test]
fn port_ranges_are_separate_clients() {
    let s = Scheduler::for_listener(&listener(
        "round_robin",
        "{key: source_ip_port_range, port_range: 100}",
        &[1, 2],
    ));
    let ip = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
    let (a, _) = connect(&s, SocketAddr::new(ip, 1_050), 0, NOW);
    let (b, _) = connect(&s, SocketAddr::new(ip, 1_150), 0, NOW);
    assert_ne!(a, b, "round robin gave the two ranges different backends");
    assert_eq!(connect(&s, SocketAddr::new(ip, 1_099), 0, NOW), (a, true));
    assert_eq!(connect(&s, SocketAddr::new(ip, 1_100), 0, NOW), (b, true));
}

#[test]
fn single_active_moves_everyone_on_failure_and_not_back() {
    let s = Scheduler::for_listener(&listener(
        "round_robin",
        "{single_active: true}",
        &[1, 2, 3],
    ));
    let active = connect(&s, client(1), 0, NOW).0;
    assert_eq!(
        s.sticky_tick(NOW),
        Some(ActiveChange {
            from: None,
            to: Some(active.clone()),
            cause: "chosen by the first connection".into()
        })
    );
    for n in 2..50 {
        assert_eq!(
            connect(&s, client(n), n.into(), NOW),
            (active.clone(), true)
        );
    }
    let snapshot = s.snapshot();
    let i = index_of(&snapshot, &active);
    snapshot.backends()[i].state.set_up(false);
    s.health_changed();
    // The tick moves it before any client comes.
    let change = s.sticky_tick(NOW + 1).expect("a move");
    assert_eq!(change.from.as_deref(), Some(active.as_str()));
    assert_eq!(change.cause, format!("{active} is down"));
    let next = change.to.expect("a backend");
    for n in 0..50 {
        assert_eq!(
            connect(&s, client(n), n.into(), NOW + 1),
            (next.clone(), true)
        );
    }
    // The old one recovers: nobody goes back.
    snapshot.backends()[i].state.set_up(true);
    s.health_changed();
    assert_eq!(s.sticky_tick(NOW + 2), None);
    for n in 0..50 {
        assert_eq!(connect(&s, client(n), n.into(), NOW + 2).0, next);
    }
    // Until told.
    assert_eq!(s.sticky_move(&active), Ok(Some(next.clone())));
    assert_eq!(
        s.sticky_tick(NOW + 3),
        None,
        "a move by hand is not reported again"
    );
    assert_eq!(connect(&s, client(7), 7, NOW + 3), (active.clone(), true));
    assert_eq!(s.sticky_status().and_then(|st| st.active), Some(active));
    // Clearing forgets it: the next connection chooses.
    assert!(s.sticky_clear(None).is_some());
    assert_eq!(s.sticky_status().and_then(|st| st.active), None);
    connect(&s, client(8), 8, NOW + 4);
    assert!(s.sticky_status().and_then(|st| st.active).is_some());
}

#[test]
fn stick_move_is_refused_where_it_cannot_apply() {
    let plain = Scheduler::for_listener(&listener("round_robin", "{}", &[1, 2]));
    assert!(plain
        .sticky_move("127.0.0.1:1")
        .unwrap_err()
        .contains("without single_active"));
    let s = Scheduler::for_listener(&listener("round_robin", "{single_active: true}", &[1, 2]));
    assert!(s
        .sticky_move("127.0.0.1:9")
        .unwrap_err()
        .contains("no backend"));
    s.snapshot().backends()[1].state.set_up(false);
    s.health_changed();
    assert_eq!(
        s.sticky_move("127.0.0.1:2"),
        Err("backend 127.0.0.1:2 cannot take new connections now (127.0.0.1:2 is down)".into())
    );
}

#[test]
fn a_dump_comes_back_in_another_scheduler_under_its_labels() {
    let config = listener("round_robin", "{}", &[1, 2, 3]);
    let old = Scheduler::for_listener(&config);
    let before: Vec<String> = (0..30)
        .map(|n| connect(&old, client(n), 0, NOW).0)
        .collect();
    let dump = old.sticky_dump(NOW + 5).expect("sticky");
    assert_eq!(dump.entries.len(), 30);
    assert!(dump.entries.iter().all(|e| e.age == 5));

    // The new process lists the backends in another order: ids differ, labels match.
    let new = Scheduler::for_listener(&listener("round_robin", "{}", &[3, 1, 2]));
    assert_eq!(new.sticky_restore(&dump, 50), 30);
    for (n, b) in before.iter().enumerate() {
        assert_eq!(connect(&new, client(n as u32), 0, 51), (b.clone(), true));
    }
    // Entries of a backend the new configuration does not have are left out.
    let fewer = Scheduler::for_listener(&listener("round_robin", "{}", &[1]));
    let kept = before.iter().filter(|b| *b == "127.0.0.1:1").count();
    assert_eq!(fewer.sticky_restore(&dump, 50), kept);
    // Without stickiness nothing is restored.
    let none = Scheduler::for_listener(&listener("round_robin", "{table_size: 8}", &[1]));
    none.set_stickiness(None);
    assert_eq!(none.sticky_restore(&dump, 50), 0);
    assert!(none.sticky_dump(50).is_none());
}

#[test]
fn a_reload_resizes_the_table_with_its_entries_and_a_new_key_empties_it() {
    let s = Scheduler::for_listener(&listener("round_robin", "{}", &[1, 2]));
    let before: Vec<String> = (0..20).map(|n| connect(&s, client(n), 0, NOW).0).collect();
    s.sticky_tick(NOW);
    s.reconfigure_from(&listener("round_robin", "{table_size: 1000}", &[1, 2]));
    let status = s.sticky_status().expect("sticky");
    assert_eq!((status.capacity, status.entries), (1000, 20));
    for (n, b) in before.iter().enumerate() {
        assert_eq!(connect(&s, client(n as u32), 0, NOW + 1), (b.clone(), true));
    }
    s.reconfigure_from(&listener(
        "round_robin",
        "{table_size: 1000, key: source_ip_port_range}",
        &[1, 2],
    ));
    assert_eq!(s.sticky_status().map(|st| st.entries), Some(0));
    s.reconfigure_from(&listener("round_robin", "{expire: 5s}", &[1, 2]));
    assert_eq!(
        s.sticky_status().map(|st| st.settings),
        Some(Stickiness {
            key: StickinessKey::SourceIp,
            table_size: 65_536,
            expire: std::time::Duration::from_secs(5),
            single_active: false,
        })
    );
}

#[test]
fn clear_by_key_and_the_sweep_of_removed_backends() {
    let s = Scheduler::for_listener(&listener("round_robin", "{}", &[1, 2]));
    for n in 0..10 {
        connect(&s, client(n), 0, NOW);
    }
    let one: KeyFilter = client(3).ip().to_string().parse().unwrap();
    assert_eq!(s.sticky_clear(Some(&one)), Some(1));
    assert_eq!(s.sticky_status().map(|st| st.entries), Some(9));
    // Backend 2 leaves: the tick sweeps its entries.
    s.reconfigure_from(&listener("round_robin", "{}", &[1]));
    s.sticky_tick(NOW);
    let left = s.sticky_status().map(|st| st.entries).unwrap_or(0);
    assert!((4..=5).contains(&left), "{left}");
    assert!(s
        .sticky_dump(NOW)
        .is_some_and(|d| d.labels == ["127.0.0.1:1"]));
}
