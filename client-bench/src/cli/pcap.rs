//! Packet captures for `gavel-cli decode --pcap`. The file formats and the
//! protocol headers are read by maintained crates: `pcap-file` (classic pcap
//! in either byte order, µs or ns; pcapng with its sections, interfaces and
//! options) and `etherparse` (Ethernet with VLAN tags, IPv4 and IPv6 with
//! their extension headers, TCP). This module keeps what is Gavel's: which
//! link layer a packet starts with, the TCP payloads put back in sequence
//! order per direction of each connection, and which end is the server.
//!
//! A damaged capture yields an error value or a skipped packet with its
//! reason, never a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use etherparse::err::ip::{HeaderError as IpHeaderError, LaxHeaderSliceError};
use etherparse::err::packet::SliceError;
use etherparse::err::Layer;
use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{DataLink, PcapError};

/// One captured packet: its 1-based number in the file (as Wireshark counts)
/// and its bytes from the link-layer header on.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    pub number: usize,
    pub linktype: DataLink,
    pub data: Cow<'a, [u8]>,
}

/// The packets of a capture, plus a note when the file ends early (the
/// packets before that point are still returned).
#[derive(Debug, Default)]
pub struct Capture<'a> {
    pub packets: Vec<Packet<'a>>,
    pub truncated: Option<String>,
}

impl<'a> Capture<'a> {
    fn push(&mut self, linktype: DataLink, data: Cow<'a, [u8]>) {
        self.packets.push(Packet {
            number: self.packets.len() + 1,
            linktype,
            data,
        });
    }
}

/// Splits a classic pcap or pcapng file into packets.
pub fn read_capture(file: &[u8]) -> Result<Capture<'_>, String> {
    let Some(&[a, b, c, d]) = file.get(..4) else {
        return Err(format!(
            "not a capture file: {} bytes, too short for a header",
            file.len()
        ));
    };
    match u32::from_be_bytes([a, b, c, d]) {
        0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => read_pcap(file),
        0x0a0d_0d0a => read_pcapng(file),
        m => Err(format!(
            "not a pcap or pcapng file (magic number 0x{m:08x} at offset 0)"
        )),
    }
}

fn read_pcap(file: &[u8]) -> Result<Capture<'_>, String> {
    let (mut rest, parser) = PcapParser::new(file).map_err(|e| match e {
        PcapError::IncompleteBuffer => "truncated pcap global header (needs 24 bytes)".to_string(),
        e => format!("bad pcap global header: {e}"),
    })?;
    // The upper bits may carry FCS information; the link type is the low 16.
    let linktype = DataLink::from(u32::from(parser.header().datalink) & 0xffff);
    let mut cap = Capture::default();
    while !rest.is_empty() {
        let at = file.len() - rest.len();
        // Raw records: their lengths are not checked against the snapshot
        // length, which some writers do not honour; only against the file.
        match parser.next_raw_packet(rest) {
            Ok((next, raw)) => {
                cap.push(linktype, raw.data);
                rest = next;
            }
            Err(e) => {
                let why = match e {
                    PcapError::IncompleteBuffer => String::new(),
                    e => format!(": {e}"),
                };
                cap.truncated = Some(format!(
                    "file ends inside packet {} (offset {at}, only {} bytes left){why}",
                    cap.packets.len() + 1,
                    rest.len()
                ));
                break;
            }
        }
    }
    Ok(cap)
}

fn read_pcapng(file: &[u8]) -> Result<Capture<'_>, String> {
    let (mut rest, mut parser) = PcapNgParser::new(file).map_err(|e| match e {
        PcapError::IncompleteBuffer => "file ends inside the pcapng section header".to_string(),
        e => format!("bad pcapng section header at offset 0: {e}"),
    })?;
    let mut cap = Capture::default();
    while !rest.is_empty() {
        let at = file.len() - rest.len();
        let block = match parser.next_block(rest) {
            Ok((next, block)) => {
                rest = next;
                block
            }
            Err(PcapError::IncompleteBuffer) => {
                cap.truncated = Some(format!(
                    "file ends inside a block (offset {at}, only {} bytes left)",
                    rest.len()
                ));
                break;
            }
            // Without a sound block the next one cannot be found: stop
            // there, keeping the packets before it.
            Err(e) => {
                cap.truncated = Some(format!(
                    "bad pcapng block at offset {at} ({e}); the rest of the file is not read"
                ));
                break;
            }
        };
        let link = |iface: u32| {
            let idb = parser.interfaces().get(iface as usize).ok_or_else(|| {
                format!("packet at offset {at} names interface {iface}, which was not described")
            })?;
            Ok::<_, String>(idb.linktype)
        };
        match block {
            Block::EnhancedPacket(p) => cap.push(link(p.interface_id)?, p.data),
            Block::Packet(p) => cap.push(link(u32::from(p.interface_id))?, p.data),
            // Interface 0; the block's length includes padding, so cut the
            // data at the original length.
            Block::SimplePacket(p) => {
                let linktype = link(0)?;
                let keep = (p.original_len as usize).min(p.data.len());
                let data = match p.data {
                    Cow::Borrowed(d) => Cow::Borrowed(&d[..keep]),
                    Cow::Owned(mut d) => {
                        d.truncate(keep);
                        Cow::Owned(d)
                    }
                };
                cap.push(linktype, data);
            }
            _ => {} // section and interface headers (the parser keeps them), statistics, ...
        }
    }
    Ok(cap)
}

/// A TCP segment pulled out of a packet.
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub payload: &'a [u8],
}

/// Why a packet carries no TCP segment we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not TCP over IP (ARP, UDP, ...): silently ignored.
    NotTcp,
    /// Could be TCP but cannot be used; the reason is worth reporting.
    Unusable(String),
}

fn short_link() -> Skip {
    Skip::Unusable("packet shorter than its link-layer header".into())
}

/// The EtherType-like protocol field of a Linux cooked header and the bytes
/// after the header: SLL v1 has it at offset 14 of 16 bytes, SLL2 at offset
/// 0 of 20. Read here rather than by etherparse's SLL parser, which rejects
/// the ARPHRD types other than Ethernet-like ones (a `tcpdump -i any`
/// capture of loopback traffic is ARPHRD_LOOPBACK) and has no SLL2.
fn cooked(d: &[u8], at: usize, len: usize) -> Result<(EtherType, &[u8]), Skip> {
    match (d.get(at..at + 2), d.get(len..)) {
        (Some(&[hi, lo]), Some(rest)) => Ok((EtherType(u16::from_be_bytes([hi, lo])), rest)),
        _ => Err(short_link()),
    }
}

/// Slices a packet that starts with its IP header.
fn from_ip(ip: &[u8]) -> Result<LaxSlicedPacket<'_>, Skip> {
    LaxSlicedPacket::from_ip(ip).map_err(|e| match e {
        LaxHeaderSliceError::Len(_) => Skip::Unusable("IP packet truncated in the capture".into()),
        LaxHeaderSliceError::Content(IpHeaderError::UnsupportedIpVersion { .. }) => Skip::NotTcp,
        LaxHeaderSliceError::Content(e) => Skip::Unusable(e.to_string()),
    })
}

/// Slices a packet from its link-layer header down to TCP.
fn slice_packet(linktype: DataLink, d: &[u8]) -> Result<LaxSlicedPacket<'_>, Skip> {
    match linktype {
        // Ethernet, with up to three VLAN (802.1Q / 802.1ad) or MACsec tags.
        DataLink::ETHERNET => LaxSlicedPacket::from_ethernet(d).map_err(|_| short_link()),
        DataLink::LINUX_SLL => {
            let (et, rest) = cooked(d, 14, 16)?;
            Ok(LaxSlicedPacket::from_ether_type(et, rest))
        }
        DataLink::LINUX_SLL2 => {
            let (et, rest) = cooked(d, 0, 20)?;
            Ok(LaxSlicedPacket::from_ether_type(et, rest))
        }
        // BSD loopback: a 4-byte address family, host (0) or network (108)
        // order: AF_INET 2, AF_INET6 24, 28 or 30 depending on the BSD.
        DataLink::NULL | DataLink::LOOP => {
            let fam: [u8; 4] = d.get(..4).and_then(|f| f.try_into().ok()).ok_or_else(short_link)?;
            let (v, w) = (u32::from_le_bytes(fam), u32::from_be_bytes(fam));
            if [v, w].iter().any(|f| matches!(f, 2 | 24 | 28 | 30)) {
                from_ip(&d[4..])
            } else {
                Err(Skip::NotTcp)
            }
        }
        // Raw IP (12 and 14 are raw IP on some BSDs).
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => from_ip(d),
        other if matches!(u32::from(other), 12 | 14) => from_ip(d),
        other => Err(Skip::Unusable(format!(
            "unsupported link type {} (supported: Ethernet 1, Linux cooked 113/276, loopback 0/108, raw IP 101)",
            u32::from(other)
        ))),
    }
}

/// Why slicing stopped, for the skipped-packet report.
fn stop_reason(err: &SliceError, layer: Layer) -> Skip {
    match (err, layer) {
        (SliceError::Len(_), Layer::TcpHeader) => {
            Skip::Unusable("TCP header truncated in the capture".into())
        }
        (SliceError::Len(_), _) => Skip::Unusable("IP packet truncated in the capture".into()),
        (SliceError::Tcp(_), _) => Skip::Unusable("bad TCP data offset".into()),
        // An EtherType that says IP over bytes of another IP version.
        (SliceError::Ip(IpHeaderError::UnsupportedIpVersion { .. }), _) => Skip::NotTcp,
        (e, layer) => Skip::Unusable(format!("bad {layer}: {e}")),
    }
}

/// Extracts the TCP segment of one captured packet.
pub fn tcp_segment<'p>(p: &'p Packet<'_>) -> Result<Segment<'p>, Skip> {
    let sliced = slice_packet(p.linktype, &p.data)?;
    let stopped = || match &sliced.stop_err {
        Some((e, layer)) => stop_reason(e, *layer),
        None => Skip::NotTcp,
    };
    let (src, dst, payload) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(ip)) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload(),
        ),
        Some(LaxNetSlice::Ipv6(ip)) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload(),
        ),
        Some(LaxNetSlice::Arp(_)) => return Err(Skip::NotTcp),
        None => return Err(stopped()),
    };
    if payload.ip_number != IpNumber::TCP {
        return Err(Skip::NotTcp);
    }
    if payload.fragmented {
        let v = if src.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(Skip::Unusable(format!(
            "fragmented {v} packet (not reassembled)"
        )));
    }
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        return Err(match stopped() {
            Skip::NotTcp => Skip::Unusable("TCP header missing".into()),
            why => why,
        });
    };
    Ok(Segment {
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        payload: tcp.payload(),
    })
}

/// One direction of a TCP connection, put back together.
#[derive(Debug, Default)]
pub struct Stream {
    pub bytes: Vec<u8>,
    /// (stream offset where a packet's new bytes end, packet number), ascending.
    pub ends: Vec<(usize, usize)>,
    /// Bytes missing from the capture: decoding must stop at `bytes.len()`.
    pub gap: Option<Gap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Packet whose data follows the hole.
    pub packet: usize,
    pub missing: u64,
}

impl Stream {
    /// The packet that completed the bytes `start..=last` (e.g. a frame): the
    /// highest-numbered packet among those that delivered them, since
    /// segments may arrive out of order.
    pub fn completed_by(&self, start: usize, last: usize) -> usize {
        let first = self.ends.partition_point(|&(end, _)| end <= start);
        let mut best = 0;
        for (i, &(_, packet)) in self.ends.iter().enumerate().skip(first) {
            let seg_start = if i == 0 { 0 } else { self.ends[i - 1].0 };
            if seg_start > last {
                break;
            }
            best = best.max(packet);
        }
        if best == 0 {
            self.ends.last().map(|&(_, p)| p).unwrap_or(0)
        } else {
            best
        }
    }
}

/// Collects one direction's segments, then orders them by sequence number.
#[derive(Debug, Default)]
struct DirectionBuilder {
    isn: Option<u32>,
    segs: Vec<(u32, usize, Vec<u8>)>,
}

impl DirectionBuilder {
    fn build(mut self) -> Stream {
        let mut st = Stream::default();
        if self.segs.is_empty() {
            return st;
        }
        // Relative offsets: from the SYN if we saw it, else from the lowest
        // sequence number seen (wrapping arithmetic copes with wrap-around).
        let base = match self.isn {
            Some(isn) => isn.wrapping_add(1),
            None => {
                let first = self.segs[0].0;
                let min = self
                    .segs
                    .iter()
                    .map(|s| s.0.wrapping_sub(first) as i32 as i64)
                    .min()
                    .unwrap_or(0);
                first.wrapping_add(min as i32 as u32)
            }
        };
        let mut segs: Vec<(i64, usize, Vec<u8>)> = self
            .segs
            .drain(..)
            .map(|(seq, p, d)| (seq.wrapping_sub(base) as i32 as i64, p, d))
            .collect();
        segs.sort_by_key(|s| (s.0, s.1));
        for (rel, packet, data) in segs {
            let have = st.bytes.len() as i64;
            let end = rel + data.len() as i64;
            if end <= have {
                continue; // retransmission of bytes we already have
            }
            if rel > have {
                st.gap = Some(Gap {
                    packet,
                    missing: (rel - have) as u64,
                });
                break;
            }
            st.bytes.extend_from_slice(&data[(have - rel) as usize..]);
            st.ends.push((st.bytes.len(), packet));
        }
        st
    }
}

/// A TCP connection with its two directions reassembled.
#[derive(Debug)]
pub struct Connection {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub to_server: Stream,
    pub to_client: Stream,
}

/// Reassembled connections in order of first appearance, and the reasons
/// some packets could not be used (packet number, reason).
pub struct Reassembled {
    pub connections: Vec<Connection>,
    pub skipped: Vec<(usize, String)>,
}

#[derive(Default)]
struct ConnBuilder {
    /// Endpoint that sent the first packet seen.
    first_src: Option<SocketAddr>,
    /// Server endpoint, if a SYN (without ACK) told us.
    syn_server: Option<SocketAddr>,
    /// Server endpoint by the first payload byte: a reply type (>= 0x80) is
    /// sent by the server, a request type by the client.
    by_payload: Option<SocketAddr>,
    dirs: HashMap<(SocketAddr, SocketAddr), DirectionBuilder>,
}

/// Reassembles every TCP connection of the capture. With `port`, only
/// connections with that port on one side are kept, and that side is the
/// server; otherwise the server is the side that received the SYN, or the
/// one using port 7070, or the one whose first payload byte is a reply type.
pub fn reassemble(cap: &Capture<'_>, port: Option<u16>) -> Reassembled {
    // Connections in order of first appearance; `index` maps a port pair to
    // its latest connection (a new SYN on the same ports starts another).
    let mut builders: Vec<((SocketAddr, SocketAddr), ConnBuilder)> = Vec::new();
    let mut index: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut skipped = Vec::new();
    for p in &cap.packets {
        let seg = match tcp_segment(p) {
            Ok(s) => s,
            Err(Skip::NotTcp) => continue,
            Err(Skip::Unusable(why)) => {
                skipped.push((p.number, why));
                continue;
            }
        };
        if let Some(port) = port {
            if seg.src.port() != port && seg.dst.port() != port {
                continue;
            }
        }
        let key = if seg.src <= seg.dst {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        let mut idx = *index.entry(key).or_insert_with(|| {
            builders.push((key, ConnBuilder::default()));
            builders.len() - 1
        });
        if seg.syn && !seg.ack {
            let c = &builders[idx].1;
            let reused = c
                .dirs
                .get(&(seg.src, seg.dst))
                .is_some_and(|d| d.isn.is_some_and(|isn| isn != seg.seq) || !d.segs.is_empty());
            if reused {
                builders.push((key, ConnBuilder::default()));
                idx = builders.len() - 1;
                index.insert(key, idx);
            }
        }
        let c = &mut builders[idx].1;
        c.first_src.get_or_insert(seg.src);
        let dir = c.dirs.entry((seg.src, seg.dst)).or_default();
        if seg.syn {
            dir.isn = Some(seg.seq);
            if !seg.ack {
                c.syn_server = Some(seg.dst);
            }
        }
        if !seg.payload.is_empty() {
            if c.by_payload.is_none() {
                c.by_payload = Some(if seg.payload[0] >= 0x80 {
                    seg.src
                } else {
                    seg.dst
                });
            }
            // With SYN, data starts one sequence number later.
            let seq = if seg.syn {
                seg.seq.wrapping_add(1)
            } else {
                seg.seq
            };
            dir.segs.push((seq, p.number, seg.payload.to_vec()));
        }
    }
    let mut connections = Vec::new();
    for (key, mut c) in builders {
        let (a, b) = key;
        let server = match port {
            Some(port) if a.port() == port && b.port() != port => a,
            Some(port) if b.port() == port && a.port() != port => b,
            _ => c
                .syn_server
                .or(if a.port() == 7070 && b.port() != 7070 {
                    Some(a)
                } else if b.port() == 7070 && a.port() != 7070 {
                    Some(b)
                } else {
                    None
                })
                .or(c.by_payload)
                .unwrap_or_else(|| {
                    let first = c.first_src.unwrap_or(a);
                    if first == a {
                        b
                    } else {
                        a
                    }
                }),
        };
        let client = if server == a { b } else { a };
        let to_server = c.dirs.remove(&(client, server)).unwrap_or_default().build();
        let to_client = c.dirs.remove(&(server, client)).unwrap_or_default().build();
        connections.push(Connection {
            client,
            server,
            to_server,
            to_client,
        });
    }
    Reassembled {
        connections,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, VlanId};
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::Endianness;
    use std::time::Duration;

    const A4: [u8; 4] = [10, 0, 0, 1];
    const B4: [u8; 4] = [10, 0, 0, 2];

    type TcpStep = etherparse::PacketBuilderStep<etherparse::TcpHeader>;

    fn write(b: TcpStep, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// IPv4 + TCP 40001 → 7070, seq 1000, with `payload`.
    fn ip4_tcp(payload: &[u8]) -> Vec<u8> {
        write(
            PacketBuilder::ipv4(A4, B4, 64).tcp(40001, 7070, 1000, 512),
            payload,
        )
    }

    fn packet(linktype: DataLink, data: Vec<u8>) -> Packet<'static> {
        Packet {
            number: 1,
            linktype,
            data: Cow::Owned(data),
        }
    }

    fn seg(linktype: DataLink, data: Vec<u8>) -> Result<(String, String, u32, Vec<u8>), Skip> {
        let p = packet(linktype, data);
        tcp_segment(&p).map(|s| {
            (
                s.src.to_string(),
                s.dst.to_string(),
                s.seq,
                s.payload.to_vec(),
            )
        })
    }

    fn ok4(payload: &[u8]) -> Result<(String, String, u32, Vec<u8>), Skip> {
        Ok((
            "10.0.0.1:40001".into(),
            "10.0.0.2:7070".into(),
            1000,
            payload.to_vec(),
        ))
    }

    #[test]
    fn ethernet_with_vlan_and_padding() {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(VlanId::try_new(42).unwrap())
            .ipv4(A4, B4, 64)
            .tcp(40001, 7070, 1000, 512);
        let mut frame = write(b, b"bid");
        // Link-layer padding after the IP packet is not TCP payload.
        frame.extend_from_slice(&[0; 6]);
        assert_eq!(seg(DataLink::ETHERNET, frame), ok4(b"bid"));
        assert_eq!(
            seg(DataLink::ETHERNET, vec![0; 8]),
            Err(Skip::Unusable(
                "packet shorter than its link-layer header".into()
            ))
        );
    }

    #[test]
    fn loopback_raw_ip_and_cooked() {
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend(ip4_tcp(b"x"));
        assert_eq!(seg(DataLink::NULL, null), ok4(b"x"));
        let mut lo6 = 30u32.to_be_bytes().to_vec();
        lo6.extend(write(
            PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).tcp(1, 7070, 5, 512),
            b"v6",
        ));
        let s = seg(DataLink::LOOP, lo6).unwrap();
        assert_eq!((s.2, s.3.as_slice()), (5, &b"v6"[..]));
        assert!(s.0.starts_with("[fdfd:"), "{}", s.0);
        assert_eq!(seg(DataLink::RAW, ip4_tcp(b"r")), ok4(b"r"));
        assert_eq!(seg(DataLink::from(12), ip4_tcp(b"r")), ok4(b"r"));
        // `tcpdump -i any` on loopback: ARPHRD_LOOPBACK (772) in SLL v1.
        let mut sll = vec![0, 0, 0x03, 0x04, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
        sll.extend(ip4_tcp(b"any"));
        assert_eq!(seg(DataLink::LINUX_SLL, sll), ok4(b"any"));
        let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 1, 0x03, 0x04, 0, 6];
        sll2.extend_from_slice(&[0; 8]);
        sll2.extend(ip4_tcp(b"any2"));
        assert_eq!(seg(DataLink::LINUX_SLL2, sll2), ok4(b"any2"));
    }

    #[test]
    fn what_is_not_usable_tcp() {
        let udp = write_udp();
        assert_eq!(seg(DataLink::RAW, udp), Err(Skip::NotTcp));
        // ARP over Ethernet.
        let mut arp = vec![0xff; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(seg(DataLink::ETHERNET, arp), Err(Skip::NotTcp));
        // More fragments follow.
        let mut frag = ip4_tcp(b"part");
        frag[6] |= 0x20;
        assert_eq!(
            seg(DataLink::RAW, frag),
            Err(Skip::Unusable(
                "fragmented IPv4 packet (not reassembled)".into()
            ))
        );
        let cut = ip4_tcp(b"")[..30].to_vec();
        assert_eq!(
            seg(DataLink::RAW, cut),
            Err(Skip::Unusable("TCP header truncated in the capture".into()))
        );
        assert_eq!(
            seg(DataLink::RAW, ip4_tcp(b"")[..12].to_vec()),
            Err(Skip::Unusable("IP packet truncated in the capture".into()))
        );
        let mut bad_offset = ip4_tcp(b"");
        bad_offset[20 + 12] = 0x20;
        assert_eq!(
            seg(DataLink::RAW, bad_offset),
            Err(Skip::Unusable("bad TCP data offset".into()))
        );
        match seg(DataLink::from(147), ip4_tcp(b"")) {
            Err(Skip::Unusable(why)) => assert!(why.contains("unsupported link type 147"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    fn write_udp() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(A4, B4, 64)
            .udp(1, 2)
            .write(&mut out, b"u")
            .unwrap();
        out
    }

    /// A little-endian pcapng: interface (raw IP), an enhanced packet with
    /// an option, a simple packet (padded), as `pcap-file` writes them.
    fn pcapng() -> Vec<u8> {
        let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::RAW, 65535))
            .unwrap();
        let one = ip4_tcp(b"one");
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_secs(1),
            original_len: one.len() as u32,
            data: Cow::Owned(one),
            options: vec![EnhancedPacketOption::Comment("a comment".into())],
        })
        .unwrap();
        let two = ip4_tcp(b"two!!");
        w.write_pcapng_block(SimplePacketBlock {
            original_len: two.len() as u32,
            data: Cow::Owned(two),
        })
        .unwrap();
        w.into_inner()
    }

    #[test]
    fn pcapng_blocks() {
        let file = pcapng();
        let cap = read_capture(&file).unwrap();
        assert_eq!(cap.truncated, None);
        assert_eq!(cap.packets.len(), 2);
        assert_eq!(cap.packets[1].number, 2);
        assert_eq!(tcp_segment(&cap.packets[0]).unwrap().payload, b"one");
        // The simple packet's padding is cut off at its original length.
        assert_eq!(tcp_segment(&cap.packets[1]).unwrap().payload, b"two!!");

        let cut = read_capture(&file[..file.len() - 3]).unwrap();
        assert_eq!(cut.packets.len(), 1);
        assert!(cut.truncated.unwrap().contains("file ends inside a block"));

        // The enhanced packet names interface 3 (its first body field).
        let len_at = |at: usize| u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap());
        let shb = len_at(0) as usize;
        let epb = shb + len_at(shb) as usize;
        let mut bad = file.clone();
        bad[epb + 8..epb + 12].copy_from_slice(&3u32.to_le_bytes());
        let e = read_capture(&bad).unwrap_err();
        assert!(
            e.contains("names interface 3, which was not described"),
            "{e}"
        );

        // A damaged block (its trailing length disagrees) ends the reading;
        // the packets before it are kept.
        let spb = epb + len_at(epb) as usize;
        let mut bad = file.clone();
        let end = spb + len_at(spb) as usize;
        bad[end - 4] ^= 0x40;
        let cap = read_capture(&bad).unwrap();
        assert_eq!(cap.packets.len(), 1);
        let why = cap.truncated.unwrap();
        assert!(
            why.starts_with(&format!("bad pcapng block at offset {spb}")),
            "{why}"
        );
    }

    #[test]
    fn classic_pcap_big_endian_nanoseconds_with_fcs_bits() {
        let frame = write(
            PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(A4, B4, 64)
                .tcp(40001, 7070, 1000, 512),
            b"ns",
        );
        let mut f = 0xa1b2_3c4du32.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 2, 0, 4]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_be_bytes());
        // Ethernet, with "FCS length present, 1 × 16 bits" in the upper bits.
        f.extend_from_slice(&0x3000_0001u32.to_be_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        f.extend_from_slice(&frame);
        let cap = read_capture(&f).unwrap();
        assert_eq!(cap.packets[0].linktype, DataLink::ETHERNET);
        assert_eq!(tcp_segment(&cap.packets[0]).unwrap().payload, b"ns");

        let cut = read_capture(&f[..f.len() - 1]).unwrap();
        assert!(cut.packets.is_empty());
        let why = cut.truncated.unwrap();
        assert!(
            why.starts_with("file ends inside packet 1 (offset 24"),
            "{why}"
        );
        assert!(read_capture(&f[..20])
            .unwrap_err()
            .contains("truncated pcap global header"));
        assert!(read_capture(b"GIF8")
            .unwrap_err()
            .contains("not a pcap or pcapng file (magic number 0x47494638"));
    }
}
