//! Property test: whatever a mutation does to a valid file, parsing returns Ok or Err
//! and never panics; every error it returns is a single non-empty line.

use proptest::prelude::*;

const VALID: &str = include_str!("../../../configs/payment-gateway.yaml");

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte (may produce invalid UTF-8, which is then skipped lossily).
    FlipByte {
        at: usize,
        xor: u8,
    },
    DeleteLine {
        at: usize,
    },
    DuplicateLine {
        at: usize,
    },
    /// Swap the keys of two `key: value` lines.
    SwapKeys {
        a: usize,
        b: usize,
    },
    /// Swap the values of two `key: value` lines.
    SwapValues {
        a: usize,
        b: usize,
    },
    /// Replace a value with one from a list of awkward values.
    ReplaceValue {
        at: usize,
        with: usize,
    },
}

const AWKWARD: &[&str] = &[
    "0",
    "-1",
    "4294967296",
    "18446744073709551616",
    "\"\"",
    "~",
    "[]",
    "{}",
    "true",
    "1.5",
    "0s",
    "1ns",
    "99999y",
    "[::]:0",
    "0.0.0.0:0",
    "\"a b\"",
    "&a x",
    "*a",
    "!!binary AA==",
    "'",
    "\"",
    "[1, [2, [3]]]",
    "10.0.0.0/0",
    "::/0",
    "auto",
    "udp",
    "v1",
    "splice",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Mutation::FlipByte { at, xor }),
        any::<usize>().prop_map(|at| Mutation::DeleteLine { at }),
        any::<usize>().prop_map(|at| Mutation::DuplicateLine { at }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapKeys { a, b }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapValues { a, b }),
        (any::<usize>(), any::<usize>()).prop_map(|(at, with)| Mutation::ReplaceValue { at, with }),
    ]
}

/// Lines of the form `<indent>[- ]key: value` with a non-empty value, as (line, colon).
fn key_value_lines(lines: &[String]) -> Vec<(usize, usize)> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#'))
        .filter_map(|(i, l)| l.find(": ").map(|c| (i, c)))
        .collect()
}

fn apply(text: &str, m: &Mutation) -> String {
    if let Mutation::FlipByte { at, xor } = m {
        let mut bytes = text.as_bytes().to_vec();
        let i = at % bytes.len();
        bytes[i] ^= xor;
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let kv = key_value_lines(&lines);
    match *m {
        Mutation::FlipByte { .. } => unreachable!(),
        Mutation::DeleteLine { at } => {
            lines.remove(at % lines.len());
        }
        Mutation::DuplicateLine { at } => {
            let i = at % lines.len();
            lines.insert(i, lines[i].clone());
        }
        Mutation::SwapKeys { a, b } => {
            let (la, ca) = kv[a % kv.len()];
            let (lb, cb) = kv[b % kv.len()];
            let (ka, va) = lines[la].split_at(ca);
            let (kb, vb) = lines[lb].split_at(cb);
            // Keep each line's indentation and list dash; swap only the key word.
            let key = |k: &str| k.trim_start().trim_start_matches("- ").to_owned();
            let prefix = |k: &str| k[..k.len() - key(k).len()].to_owned();
            let (na, nb) = (
                format!("{}{}{}", prefix(ka), key(kb), va),
                format!("{}{}{}", prefix(kb), key(ka), vb),
            );
            lines[la] = na;
            lines[lb] = nb;
        }
        Mutation::SwapValues { a, b } => {
            let (la, ca) = kv[a % kv.len()];
            let (lb, cb) = kv[b % kv.len()];
            let (ka, va) = lines[la].split_at(ca);
            let (kb, vb) = lines[lb].split_at(cb);
            let (na, nb) = (format!("{ka}{vb}"), format!("{kb}{va}"));
            lines[la] = na;
            lines[lb] = nb;
        }
        Mutation::ReplaceValue { at, with } => {
            let (l, c) = kv[at % kv.len()];
            let key = lines[l][..c].to_owned();
            lines[l] = format!("{key}: {}", AWKWARD[with % AWKWARD.len()]);
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic(ms in proptest::collection::vec(mutation(), 1..6)) {
        let mut text = VALID.to_owned();
        for m in &ms {
            text = apply(&text, m);
        }
        if let Err(errs) = ringlb_config::parse(&text) {
            prop_assert!(!errs.errors.is_empty());
            for e in &errs.errors {
                let line = e.to_string();
                prop_assert!(!e.message.is_empty(), "empty message for {:?}", e);
                prop_assert!(!line.contains('\n'), "multi-line error: {:?}", line);
            }
        }
    }
}

/// The mutator really mutates (otherwise the property above would be vacuous).
#[test]
fn mutations_change_the_text_and_often_break_it() {
    let mut broken = 0;
    for i in 0..200usize {
        let m = Mutation::ReplaceValue { at: i * 7, with: i };
        let t = apply(VALID, &m);
        if ringlb_config::parse(&t).is_err() {
            broken += 1;
        }
    }
    assert!(
        broken > 50,
        "only {broken} of 200 mutations broke the config"
    );
}
