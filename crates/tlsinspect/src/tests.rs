//! Hellos built here byte by byte, split, truncated, garbled and oversized: every input
//! gives a verdict, none panics.

use proptest::prelude::*;

use crate::synthetic::*;
use crate::*;

fn typical() -> Vec<u8> {
    records(
        &hello(&[
            sni_ext("Pay.Bank-A.example."),
            alpn_ext(&["h2", "http/1.1"]),
            versions_ext(&[0x2a2a, 0x0304, 0x0303]),
        ]),
        16384,
    )
}

fn large() -> Vec<u8> {
    records(
        &hello(&[
            sni_ext("x.bank-b.example"),
            versions_ext(&[0x0304]),
            post_quantum_key_share(),
            // What else a browser sends (groups, signature algorithms, padding…).
            ext(21, &[0; 400]),
        ]),
        16384,
    )
}

#[test]
fn reads_name_alpn_and_highest_version() {
    let h = inspect(&typical()).unwrap();
    assert_eq!(h.sni.as_deref(), Some("pay.bank-a.example"));
    assert_eq!(h.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(h.version, TlsVersion::TLS_1_3);
    assert_eq!(h.version.to_string(), "1.3");
}

#[test]
fn without_extensions_the_version_field_counts() {
    let mut body = vec![3, 1];
    body.extend([0u8; 32]);
    body.extend([0, 0, 2, 0, 0x2f, 1, 0]);
    let mut msg = vec![1, 0, 0, body.len() as u8];
    msg.extend(body);
    let h = inspect(&records(&msg, 100)).unwrap();
    assert_eq!((h.sni, h.version), (None, TlsVersion::TLS_1_0));
}

#[test]
fn a_post_quantum_hello_spans_more_than_a_segment_and_still_reads() {
    let input = large();
    assert!(input.len() > 1500, "{}", input.len());
    assert_eq!(
        inspect(&input).unwrap().sni.as_deref(),
        Some("x.bank-b.example")
    );
}

#[test]
fn every_prefix_of_a_hello_is_incomplete_and_the_whole_reads() {
    for input in [typical(), large(), records(&hello(&[sni_ext("a.b")]), 7)] {
        for cut in 0..input.len() {
            assert_eq!(
                inspect(&input[..cut]),
                Err(InspectError::Incomplete),
                "{cut}"
            );
        }
        assert!(inspect(&input).is_ok());
    }
}

#[test]
fn records_of_any_size_give_the_same_hello() {
    let msg = hello(&[sni_ext("split.example"), post_quantum_key_share()]);
    let whole = inspect(&records(&msg, 16384)).unwrap();
    for fragment in [1, 2, 3, 4, 5, 100, 1400] {
        assert_eq!(inspect(&records(&msg, fragment)).as_ref(), Ok(&whole));
    }
}

#[test]
fn other_protocols_are_not_tls() {
    for input in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"SSH-2.0-x",
        b"\x16\x02",
        b"\x80\x2e\x01",
    ] {
        assert_eq!(inspect(input), Err(InspectError::NotTls), "{input:?}");
    }
}

#[test]
fn malformed_hellos_say_why() {
    let mut not_hello = hello(&[]);
    not_hello[0] = 2;
    let twice = hello(&[sni_ext("a.example"), sni_ext("b.example")]);
    let bad_name = hello(&[sni_ext("a b.example")]);
    for (input, why) in [
        (records(&not_hello, 100), "not a ClientHello"),
        (records(&twice, 100), "twice"),
        (records(&bad_name, 100), "character"),
        (vec![22, 3, 1, 0, 0], "empty handshake record"),
        (vec![22, 3, 1, 0x40, 1], "longer than 16 KiB"),
    ] {
        match inspect(&input) {
            Err(InspectError::Malformed(w)) => assert!(w.contains(why), "{w}"),
            other => panic!("{why}: {other:?}"),
        }
    }
}

#[test]
fn oversized_hellos_are_too_large() {
    let huge = hello(&[ext(21, &[0; MAX_HELLO])]);
    assert_eq!(
        inspect(&records(&huge, 16384)[..100]),
        Err(InspectError::TooLarge)
    );
    // Tiny records whose headers outgrow the input limit before the hello ends.
    let many = records(&hello(&[ext(21, &[0; 8000])]), 1);
    assert_eq!(inspect(&many[..MAX_INPUT + 1]), Err(InspectError::TooLarge));
}

#[test]
fn grease_and_unknown_versions() {
    assert!(TlsVersion(0x7a7a).is_grease() && !TlsVersion(0x0304).is_grease());
    assert_eq!(TlsVersion(0x7f1c).to_string(), "0x7f1c");
    assert_eq!(TlsVersion::SSL_3_0.to_string(), "ssl3");
}

fn any_hello() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::option::of("[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}"),
        proptest::collection::vec("[a-z0-9/.]{1,10}", 0..4),
        proptest::bool::ANY,
        1usize..3000,
    )
        .prop_map(|(name, alpn, pq, fragment)| {
            let mut exts = Vec::new();
            if let Some(n) = name {
                exts.push(sni_ext(&n));
            }
            if !alpn.is_empty() {
                let refs: Vec<&str> = alpn.iter().map(String::as_str).collect();
                exts.push(alpn_ext(&refs));
            }
            if pq {
                exts.push(post_quantum_key_share());
            }
            records(&hello(&exts), fragment)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = inspect(&bytes);
        let mut framed = vec![22, 3, 1];
        framed.extend(&bytes);
        let _ = inspect(&framed);
    }

    #[test]
    fn a_split_hello_reads_at_every_boundary(input in any_hello()) {
        let whole = inspect(&input);
        prop_assert!(whole.is_ok(), "{:?}", whole);
        // What a reader sees after each segment: every strict prefix asks for more.
        for cut in 0..input.len() {
            prop_assert_eq!(inspect(&input[..cut]), Err(InspectError::Incomplete));
        }
    }

    #[test]
    fn garbled_hellos_never_panic(input in any_hello(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut garbled = input.clone();
        for (at, byte) in flips {
            let i = at % garbled.len();
            garbled[i] ^= byte | 1;
        }
        let _ = inspect(&garbled);
        for cut in (0..garbled.len()).step_by(97) {
            let _ = inspect(&garbled[..cut]);
        }
    }

    #[test]
    fn oversized_or_extended_hellos_never_panic(input in any_hello(), extra in proptest::collection::vec(any::<u8>(), 0..20000)) {
        let mut long = input;
        long.extend(extra);
        let _ = inspect(&long);
    }
}
