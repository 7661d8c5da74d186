//! PROXY protocol v2 (binary), as sent by AWS NLB and HAProxy: read on accept, write upstream.

use std::io;
use std::net::SocketAddr;

use ppp::v2::{Addresses, Builder, Command, Header, Protocol, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

/// 12-byte signature, version/command, family/protocol, 2-byte length.
const FIXED: usize = 16;
/// Addresses plus generous room for TLVs; a longer header is refused before it is read.
const MAX_PAYLOAD: usize = 1024;

/// Reads one v2 header. Returns the client's source address, or `None` for a LOCAL command
/// (health checks of the load balancer itself), in which case the socket peer stands.
pub async fn read_v2<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<SocketAddr>> {
    let mut buf = [0u8; FIXED + MAX_PAYLOAD];
    r.read_exact(&mut buf[..FIXED]).await?;
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(invalid(format!(
            "PROXY v2 header of {len} bytes is too long"
        )));
    }
    r.read_exact(&mut buf[FIXED..FIXED + len]).await?;
    let header = Header::try_from(&buf[..FIXED + len])
        .map_err(|e| invalid(format!("bad PROXY v2 header: {e}")))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

/// Header announcing a TCP stream from `client` to `local`. Mixed families are announced as
/// IPv6 with the IPv4 address mapped.
pub fn encode_v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        _ => (to_v6(client), to_v6(local)),
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (client, local),
    )
    .build()
    .expect("a header with two addresses fits")
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_v4_v6_and_mixed() {
        for (c, l) in [
            ("203.0.113.7:40000", "10.0.0.1:443"),
            ("[2001:db8::1]:5000", "[::1]:22"),
            ("203.0.113.7:40000", "[::1]:22"),
        ] {
            let (c, l): (SocketAddr, SocketAddr) = (c.parse().unwrap(), l.parse().unwrap());
            let mut bytes = encode_v2(c, l);
            bytes.extend_from_slice(b"payload");
            let mut r = &bytes[..];
            let got = read_v2(&mut r).await.unwrap().unwrap();
            assert_eq!(to_v6(got), to_v6(c));
            assert_eq!(r, b"payload", "reads exactly the header");
        }
    }

    #[tokio::test]
    async fn local_command_keeps_peer() {
        let bytes = Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Unspecified,
            Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(read_v2(&mut &bytes[..]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn rejects_garbage_and_oversize() {
        let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let err = read_v2(&mut &garbage[..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut big = encode_v2("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        big[14..16].copy_from_slice(&5000u16.to_be_bytes());
        let err = read_v2(&mut &big[..]).await.unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        let short = &encode_v2("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap())[..20];
        assert_eq!(
            read_v2(&mut &short[..]).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
