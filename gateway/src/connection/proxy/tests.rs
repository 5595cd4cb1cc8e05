use super::*;
use ppp::v2::{Builder, Command, Protocol, Version};
use proptest::prelude::*;

fn v2_header(src: SocketAddr, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let dst: SocketAddr = "127.0.0.1:8444".parse().unwrap();
    let addrs: v2::Addresses = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            v2::IPv4::new(*s.ip(), *d.ip(), s.port(), d.port()).into()
        }
        (SocketAddr::V6(s), _) => v2::IPv6::new(
            *s.ip(),
            std::net::Ipv6Addr::LOCALHOST,
            s.port(),
            d_port(dst),
        )
        .into(),
        _ => unreachable!(),
    };
    let mut b = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addrs);
    for (kind, value) in tlvs {
        b = b.write_tlv(*kind, value).unwrap();
    }
    b.build().unwrap()
}

fn d_port(a: SocketAddr) -> u16 {
    a.port()
}

#[test]
fn v1_tcp4_tcp6_unknown() {
    let h = b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 8444\r\nrest";
    let (info, len) = parse(h).unwrap().unwrap();
    assert_eq!(info.source, Some("10.1.2.3:5555".parse().unwrap()));
    assert_eq!(&h[len..], b"rest");
    let h = b"PROXY TCP6 fd00::7 ::1 5555 8444\r\n";
    assert_eq!(
        parse(h).unwrap().unwrap().0.source,
        Some("[fd00::7]:5555".parse().unwrap())
    );
    let h = b"PROXY UNKNOWN\r\n";
    assert_eq!(parse(h).unwrap().unwrap().0.source, None);
}

#[test]
fn v2_with_aws_and_azure_tlvs() {
    let src: SocketAddr = "10.9.8.7:4000".parse().unwrap();
    let mut aws = vec![0x01];
    aws.extend_from_slice(b"vpce-0abc");
    let h = v2_header(src, &[(0xEA, aws)]);
    let (info, len) = parse(&h).unwrap().unwrap();
    assert_eq!(len, h.len());
    assert_eq!(info.source, Some(src));
    assert_eq!(info.endpoint_id.as_deref(), Some("vpce-0abc"));
    let mut az = vec![0x01];
    az.extend_from_slice(&123456u32.to_le_bytes());
    let h = v2_header(src, &[(0xEE, az)]);
    assert_eq!(
        parse(&h).unwrap().unwrap().0.endpoint_id.as_deref(),
        Some("123456")
    );
    let h = v2_header("[fd00::9]:1".parse().unwrap(), &[]);
    assert_eq!(
        parse(&h).unwrap().unwrap().0.source,
        Some("[fd00::9]:1".parse().unwrap())
    );
}

#[test]
fn incomplete_then_complete() {
    let h = v2_header(
        "10.0.0.1:1".parse().unwrap(),
        &[(0xEA, b"\x01vpce-1".to_vec())],
    );
    for cut in 0..h.len() {
        assert_eq!(parse(&h[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    let v1 = b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 8444\r\n";
    for cut in 0..v1.len() - 1 {
        assert_eq!(parse(&v1[..cut]), Ok(None), "prefix of {cut} bytes");
    }
}

#[test]
fn rejects() {
    let cases: &[(&[u8], Reject)] = &[
        (b"\x16\x03\x01\x02\x00", Reject::Missing),
        (b"GET / HTTP/1.1\r\n", Reject::Malformed),
        (b"PROXY TCP4 10.1.2.3 nope 5555 8444\r\n", Reject::Malformed),
        (
            b"PROXY TCP4 999.1.2.3 127.0.0.1 5555 8444\r\n",
            Reject::Malformed,
        ),
        (
            b"PROXY TCP9 10.1.2.3 127.0.0.1 5555 8444\r\n",
            Reject::Malformed,
        ),
        (
            b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 8444 extra\r\n",
            Reject::Malformed,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            parse(input),
            Err(*want),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // A v1 header that never ends: the size bound stops it.
    let mut long = b"PROXY ".to_vec();
    long.resize(V1_MAX - 1, b'x');
    assert_eq!(parse(&long), Ok(None));
    long.push(b'x');
    assert_eq!(parse(&long), Err(Reject::Malformed));
    // A v2 header that declares more than the bound.
    let mut big = V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    assert_eq!(parse(&big), Err(Reject::Malformed));
    // A v2 header whose AWS TLV is not UTF-8, or Azure TLV too short.
    let h = v2_header(
        "10.0.0.1:1".parse().unwrap(),
        &[(0xEA, vec![0x01, 0xFF, 0xFE])],
    );
    assert_eq!(parse(&h), Err(Reject::Malformed));
    let h = v2_header("10.0.0.1:1".parse().unwrap(), &[(0xEE, vec![0x01, 1, 2])]);
    assert_eq!(parse(&h), Err(Reject::Malformed));
}

proptest! {
    /// Random bytes: never a panic; a result is either "need more" (only for
    /// a prefix of a valid signature) or a rejection, or a header that ppp
    /// itself parses strictly.
    #[test]
    fn random_bytes_never_panic_nor_pass_unchecked(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        match parse(&buf) {
            Ok(Some((_, len))) => {
                prop_assert!(len <= buf.len());
                let strict = ppp::HeaderResult::parse(&buf[..len]);
                prop_assert!(matches!(strict, ppp::HeaderResult::V1(Ok(_)) | ppp::HeaderResult::V2(Ok(_))));
            }
            Ok(None) => prop_assert!(buf.len() < V2_MAX),
            Err(_) => {}
        }
    }

    /// Valid v2 headers with random bytes flipped: never a panic, and a
    /// header that still parses is one ppp accepts in full.
    #[test]
    fn mutated_v2_headers(
        a in any::<[u8; 4]>(), port in any::<u16>(), id in "[a-z0-9-]{1,40}",
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut tlv = vec![0x01];
        tlv.extend_from_slice(id.as_bytes());
        let mut h = v2_header(SocketAddr::new(IpAddr::from(a), port), &[(0xEA, tlv)]);
        for (at, v) in flips {
            let i = at % h.len();
            h[i] = v;
        }
        if let Ok(Some((_, len))) = parse(&h) {
            prop_assert!(v2::Header::try_from(&h[..len]).is_ok());
        }
    }

    /// Mutated v1 headers likewise.
    #[test]
    fn mutated_v1_headers(
        a in any::<[u8; 4]>(), p in any::<u16>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let ip = std::net::Ipv4Addr::from(a);
        let mut h = format!("PROXY TCP4 {ip} 127.0.0.1 {p} 8444\r\n").into_bytes();
        for (at, v) in flips {
            let i = at % h.len();
            h[i] = v;
        }
        if let Ok(Some((info, len))) = parse(&h) {
            prop_assert!(ppp::v1::Header::try_from(&h[..len]).is_ok());
            prop_assert!(h[..len].ends_with(b"\r\n"));
            let _ = info;
        }
    }
}
