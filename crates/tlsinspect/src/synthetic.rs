//! ClientHellos built byte by byte, for tests and benchmarks (here and in ringlb's
//! integration tests): real clients cannot be told to split a hello, oversize it or
//! garble it. Not used by the data path.

/// `body` with a one-byte length in front.
pub fn vec8(body: &[u8]) -> Vec<u8> {
    let mut v = vec![body.len() as u8];
    v.extend_from_slice(body);
    v
}

/// `body` with a two-byte length in front.
pub fn vec16(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// One extension: type, length, data.
pub fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut v = kind.to_be_bytes().to_vec();
    v.extend(vec16(data));
    v
}

/// server_name with one host name.
pub fn sni_ext(name: &str) -> Vec<u8> {
    let mut entry = vec![0u8];
    entry.extend(vec16(name.as_bytes()));
    ext(0, &vec16(&entry))
}

/// ALPN offering `protocols`.
pub fn alpn_ext(protocols: &[&str]) -> Vec<u8> {
    let list: Vec<u8> = protocols.iter().flat_map(|p| vec8(p.as_bytes())).collect();
    ext(16, &vec16(&list))
}

/// supported_versions offering `versions` (wire values, e.g. 0x0304).
pub fn versions_ext(versions: &[u16]) -> Vec<u8> {
    let list: Vec<u8> = versions.iter().flat_map(|v| v.to_be_bytes()).collect();
    ext(43, &vec8(&list))
}

/// A key_share with an X25519MLKEM768 share (group 0x11ec, 1,216 bytes) and an X25519 one:
/// what browsers send now, and what pushes a hello past one TCP segment.
pub fn post_quantum_key_share() -> Vec<u8> {
    let mut shares = 0x11ecu16.to_be_bytes().to_vec();
    shares.extend(vec16(&[0x5a; 1216]));
    shares.extend(0x001du16.to_be_bytes());
    shares.extend(vec16(&[0x33; 32]));
    ext(51, &vec16(&shares))
}

/// A ClientHello handshake message (header included) with these extensions.
pub fn hello(extensions: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.extend(vec8(&[9u8; 32]));
    body.extend(vec16(&[0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]));
    body.extend(vec8(&[0]));
    body.extend(vec16(&extensions.concat()));
    let mut msg = vec![1];
    msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

/// The message in handshake records of at most `fragment` bytes each.
pub fn records(message: &[u8], fragment: usize) -> Vec<u8> {
    message
        .chunks(fragment)
        .flat_map(|c| {
            let mut r = vec![22, 3, 1];
            r.extend(vec16(c));
            r
        })
        .collect()
}
