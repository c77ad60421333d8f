//! Config text for tests: one listener, written the way every integration test needs it.

use std::net::SocketAddr;

/// `top` (top-level keys, each line ending in `\n`), then one listener `name` on `bind`
/// with `keys` (listener keys, one per line; nested keys keep their own indentation) and
/// `backends`.
pub fn one_listener_yaml(
    top: &str,
    name: &str,
    bind: &str,
    keys: &str,
    backends: &[SocketAddr],
) -> String {
    let mut y = format!("{top}listeners:\n  - name: {name}\n    bind: {bind}\n");
    for line in keys.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str("    ");
        y.push_str(line);
        y.push('\n');
    }
    y.push_str("    backends:\n");
    for b in backends {
        y.push_str(&format!("      - addr: {b}\n"));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_keep_their_indentation() {
        let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let y = one_listener_yaml(
            "workers: 1\n",
            "t",
            "127.0.0.1:0",
            "health_check:\n  rise: 1",
            &[b],
        );
        assert_eq!(
            y,
            "workers: 1\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    health_check:\n      rise: 1\n    backends:\n      - addr: 127.0.0.1:9\n"
        );
    }
}
