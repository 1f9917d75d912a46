//! Just enough packet-capture parsing for `gavel-cli decode --pcap`: classic
//! pcap (either byte order, µs or ns) and pcapng; Ethernet (with VLAN tags),
//! Linux cooked (SLL, SLL2), BSD loopback and raw-IP link types; IPv4 and
//! IPv6 (extension headers skipped, fragments ignored); TCP payloads, put back
//! in sequence order per direction of each connection.
//!
//! Every read is bounds-checked: a damaged capture yields an error value,
//! never a panic.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One captured packet: its 1-based number in the file (as Wireshark counts)
/// and its bytes from the link-layer header on.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    pub number: usize,
    pub linktype: u32,
    pub data: &'a [u8],
}

/// The packets of a capture, plus a note when the file ends early (the
/// packets before that point are still returned).
#[derive(Debug, Default)]
pub struct Capture<'a> {
    pub packets: Vec<Packet<'a>>,
    pub truncated: Option<String>,
}

fn u16_at(b: &[u8], at: usize, le: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if le {
        u16::from_le_bytes(s)
    } else {
        u16::from_be_bytes(s)
    })
}

fn u32_at(b: &[u8], at: usize, le: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if le {
        u32::from_le_bytes(s)
    } else {
        u32::from_be_bytes(s)
    })
}

/// Splits a classic pcap or pcapng file into packets.
pub fn read_capture(file: &[u8]) -> Result<Capture<'_>, String> {
    if file.len() < 4 {
        return Err(format!(
            "not a capture file: {} bytes, too short for a header",
            file.len()
        ));
    }
    match u32_at(file, 0, false).unwrap_or(0) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => read_pcap(file, false),
        0xd4c3_b2a1 | 0x4d3c_b2a1 => read_pcap(file, true),
        0x0a0d_0d0a => read_pcapng(file),
        m => Err(format!(
            "not a pcap or pcapng file (magic number 0x{m:08x} at offset 0)"
        )),
    }
}

fn read_pcap(file: &[u8], le: bool) -> Result<Capture<'_>, String> {
    let linktype = u32_at(file, 20, le)
        .ok_or("truncated pcap global header (needs 24 bytes)")?
        // The upper bits may carry FCS information; the link type is the low 16.
        & 0xffff;
    let mut cap = Capture::default();
    let mut at = 24;
    while at < file.len() {
        let (Some(incl), Some(_orig)) = (u32_at(file, at + 8, le), u32_at(file, at + 12, le))
        else {
            cap.truncated = Some(format!(
                "file ends inside the record header of packet {} (offset {at})",
                cap.packets.len() + 1
            ));
            break;
        };
        let start = at + 16;
        let Some(data) = file.get(start..start.saturating_add(incl as usize)) else {
            cap.truncated = Some(format!(
                "file ends inside packet {} (offset {at}: {incl} bytes announced, {} present)",
                cap.packets.len() + 1,
                file.len() - start
            ));
            break;
        };
        cap.packets.push(Packet {
            number: cap.packets.len() + 1,
            linktype,
            data,
        });
        at = start + incl as usize;
    }
    Ok(cap)
}

fn read_pcapng(file: &[u8]) -> Result<Capture<'_>, String> {
    let mut cap = Capture::default();
    let mut le = true;
    let mut interfaces: Vec<u32> = Vec::new();
    let mut at = 0;
    while at < file.len() {
        let Some(btype) = u32_at(file, at, le) else {
            cap.truncated = Some(format!("file ends inside a block header (offset {at})"));
            break;
        };
        if btype == 0x0a0d_0d0a {
            // Section header: its byte-order magic decides the endianness.
            le = match file.get(at + 8..at + 12) {
                Some([0x4d, 0x3c, 0x2b, 0x1a]) => true,
                Some([0x1a, 0x2b, 0x3c, 0x4d]) => false,
                _ => return Err(format!("bad pcapng section header at offset {at}")),
            };
            interfaces.clear();
        }
        let Some(blen) = u32_at(file, at + 4, le).map(|l| l as usize) else {
            cap.truncated = Some(format!("file ends inside a block header (offset {at})"));
            break;
        };
        if blen < 12 || blen % 4 != 0 {
            return Err(format!(
                "bad pcapng block length {blen} at offset {at} (must be a multiple of 4, at least 12)"
            ));
        }
        let Some(block) = file.get(at..at + blen) else {
            cap.truncated = Some(format!(
                "file ends inside a block (offset {at}: {blen} bytes announced, {} present)",
                file.len() - at
            ));
            break;
        };
        let body = &block[8..blen - 4];
        let bad = || format!("bad pcapng block of type {btype} at offset {at}");
        match btype {
            // Interface description: link type of the next interface id.
            1 => interfaces.push(u16_at(body, 0, le).ok_or_else(bad)? as u32),
            // Enhanced packet.
            6 => {
                let iface = u32_at(body, 0, le).ok_or_else(bad)? as usize;
                let caplen = u32_at(body, 12, le).ok_or_else(bad)? as usize;
                let data = body.get(20..20 + caplen).ok_or_else(bad)?;
                let linktype = *interfaces.get(iface).ok_or_else(|| {
                    format!(
                        "packet at offset {at} names interface {iface}, which was not described"
                    )
                })?;
                cap.packets.push(Packet {
                    number: cap.packets.len() + 1,
                    linktype,
                    data,
                });
            }
            // Simple packet: interface 0, captured length implied by the block.
            3 => {
                let orig = u32_at(body, 0, le).ok_or_else(bad)? as usize;
                let data = &body[4..];
                let data = &data[..orig.min(data.len())];
                let linktype = *interfaces.first().ok_or_else(bad)?;
                cap.packets.push(Packet {
                    number: cap.packets.len() + 1,
                    linktype,
                    data,
                });
            }
            // Obsolete packet block.
            2 => {
                let iface = u16_at(body, 0, le).ok_or_else(bad)? as usize;
                let caplen = u32_at(body, 12, le).ok_or_else(bad)? as usize;
                let data = body.get(20..20 + caplen).ok_or_else(bad)?;
                let linktype = *interfaces.get(iface).ok_or_else(bad)?;
                cap.packets.push(Packet {
                    number: cap.packets.len() + 1,
                    linktype,
                    data,
                });
            }
            _ => {} // statistics, name resolution, custom blocks...
        }
        at += blen;
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

/// Finds the IP packet inside a link-layer frame: (ethertype-like version, bytes).
fn link_payload(linktype: u32, d: &[u8]) -> Result<&[u8], Skip> {
    let ethertype_ip = |et: u16, rest: &'_ [u8]| -> Result<(), Skip> {
        match et {
            0x0800 | 0x86dd if !rest.is_empty() => Ok(()),
            _ => Err(Skip::NotTcp),
        }
    };
    let short = || Skip::Unusable("packet shorter than its link-layer header".into());
    match linktype {
        // Ethernet, with any number of 802.1Q / 802.1ad tags.
        1 => {
            let mut at = 12;
            loop {
                let et = u16_at(d, at, false).ok_or_else(short)?;
                if matches!(et, 0x8100 | 0x88a8 | 0x9100) {
                    at += 4;
                    continue;
                }
                let rest = &d[at + 2..];
                ethertype_ip(et, rest)?;
                return Ok(rest);
            }
        }
        // BSD loopback: a 4-byte address family, host (0) or network (108) order.
        0 | 108 => {
            let fam = d.get(0..4).ok_or_else(short)?;
            let v = u32::from_le_bytes(fam.try_into().unwrap_or_default());
            let w = u32::from_be_bytes(fam.try_into().unwrap_or_default());
            if [v, w].iter().any(|f| matches!(f, 2 | 24 | 28 | 30)) {
                Ok(&d[4..])
            } else {
                Err(Skip::NotTcp)
            }
        }
        // Raw IP.
        101 | 12 | 14 | 228 | 229 => Ok(d),
        // Linux cooked capture v1: protocol at 14, header 16 bytes.
        113 => {
            let et = u16_at(d, 14, false).ok_or_else(short)?;
            let rest = d.get(16..).ok_or_else(short)?;
            ethertype_ip(et, rest)?;
            Ok(rest)
        }
        // Linux cooked capture v2: protocol at 0, header 20 bytes.
        276 => {
            let et = u16_at(d, 0, false).ok_or_else(short)?;
            let rest = d.get(20..).ok_or_else(short)?;
            ethertype_ip(et, rest)?;
            Ok(rest)
        }
        other => Err(Skip::Unusable(format!(
            "unsupported link type {other} (supported: Ethernet 1, Linux cooked 113/276, loopback 0/108, raw IP 101)"
        ))),
    }
}

/// Extracts the TCP segment of one captured packet.
pub fn tcp_segment<'a>(p: &Packet<'a>) -> Result<Segment<'a>, Skip> {
    let ip = link_payload(p.linktype, p.data)?;
    let truncated = || Skip::Unusable("IP packet truncated in the capture".into());
    let (src, dst, tcp) = match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let total = u16_at(ip, 2, false).ok_or_else(truncated)? as usize;
            if ihl < 20 || ip.len() < ihl {
                return Err(truncated());
            }
            if ip[9] != 6 {
                return Err(Skip::NotTcp);
            }
            let frag = u16_at(ip, 6, false).ok_or_else(truncated)?;
            if frag & 0x3fff != 0 {
                return Err(Skip::Unusable(
                    "fragmented IPv4 packet (not reassembled)".into(),
                ));
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            // Trim link-layer padding; keep what was captured if shorter. A
            // total length of 0 comes from segmentation offload: take all.
            let end = if total == 0 {
                ip.len()
            } else {
                total.clamp(ihl, ip.len())
            };
            (IpAddr::V4(src), IpAddr::V4(dst), &ip[ihl..end])
        }
        Some(6) => {
            if ip.len() < 40 {
                return Err(truncated());
            }
            let plen = u16_at(ip, 4, false).ok_or_else(truncated)? as usize;
            let a: [u8; 16] = ip[8..24].try_into().map_err(|_| truncated())?;
            let b: [u8; 16] = ip[24..40].try_into().map_err(|_| truncated())?;
            let mut next = ip[6];
            let mut at = 40;
            let end = (40 + plen).min(ip.len());
            loop {
                match next {
                    6 => break,
                    0 | 43 | 60 => {
                        let h = ip.get(at..at + 2).ok_or_else(truncated)?;
                        next = h[0];
                        at += (h[1] as usize + 1) * 8;
                    }
                    51 => {
                        let h = ip.get(at..at + 2).ok_or_else(truncated)?;
                        next = h[0];
                        at += (h[1] as usize + 2) * 4;
                    }
                    44 => {
                        let h = ip.get(at..at + 8).ok_or_else(truncated)?;
                        if u16::from_be_bytes([h[2], h[3]]) != 0 {
                            return Err(Skip::Unusable(
                                "fragmented IPv6 packet (not reassembled)".into(),
                            ));
                        }
                        next = h[0];
                        at += 8;
                    }
                    _ => return Err(Skip::NotTcp),
                }
            }
            let tcp = ip.get(at..end.max(at)).ok_or_else(truncated)?;
            (
                IpAddr::V6(Ipv6Addr::from(a)),
                IpAddr::V6(Ipv6Addr::from(b)),
                tcp,
            )
        }
        _ => return Err(Skip::NotTcp),
    };
    if tcp.len() < 20 {
        return Err(Skip::Unusable("TCP header truncated in the capture".into()));
    }
    let doff = (tcp[12] >> 4) as usize * 4;
    if doff < 20 || doff > tcp.len() {
        return Err(Skip::Unusable("bad TCP data offset".into()));
    }
    let flags = tcp[13];
    Ok(Segment {
        src: SocketAddr::new(src, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        syn: flags & 0x02 != 0,
        ack: flags & 0x10 != 0,
        payload: &tcp[doff..],
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
