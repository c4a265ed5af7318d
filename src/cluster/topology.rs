//! Parsing what a cluster node says about the cluster: `CLUSTER SHARDS` (Redis 7+) and,
//! on older servers, `CLUSTER SLOTS`.

use crate::addr::ServerAddr;
use crate::error::{Error, Result};
use crate::resp::Value;

/// One node as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Where to connect.
    pub addr: ServerAddr,
    /// The node's cluster id (empty when the reply did not carry it).
    pub id: String,
    /// `false` for nodes the cluster reports as failed or loading.
    pub healthy: bool,
}

/// A master, its slot ranges and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The master.
    pub master: NodeInfo,
    /// Inclusive slot ranges the master serves.
    pub slots: Vec<(u16, u16)>,
    /// Its replicas.
    pub replicas: Vec<NodeInfo>,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Masters that own at least one slot.
    pub shards: Vec<ShardInfo>,
}

impl Topology {
    /// `true` while some replica is reported failed or still loading: worth looking
    /// again soon (a fresh replica reports `loading` until its first sync).
    pub fn has_unhealthy(&self) -> bool {
        self.shards
            .iter()
            .any(|s| !s.master.healthy || s.replicas.iter().any(|r| !r.healthy))
    }

    /// Number of slots covered by some master.
    pub fn covered_slots(&self) -> usize {
        let mut seen = vec![false; super::slot::SLOT_COUNT];
        for s in &self.shards {
            for &(a, b) in &s.slots {
                for slot in a..=b.min(16383) {
                    seen[slot as usize] = true;
                }
            }
        }
        seen.iter().filter(|&&b| b).count()
    }
}

fn bad(what: &str) -> Error {
    Error::Cluster(format!("unexpected topology reply: {what}"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Bulk(b) | Value::Simple(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bulk(b) | Value::Simple(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// RESP2 renders maps as flat [key, value, key, value...] arrays.
fn map_get<'a>(items: &'a [Value], key: &str) -> Option<&'a Value> {
    items
        .chunks(2)
        .find(|kv| kv.len() == 2 && text(&kv[0]).as_deref() == Some(key))
        .map(|kv| &kv[1])
}

/// The host to use for a node: its announced endpoint, else its ip, else the host of
/// the node we asked (the cluster reports "" or "?" for unknown endpoints).
fn pick_host(endpoint: Option<String>, ip: Option<String>, asked: &ServerAddr) -> String {
    let usable = |h: &Option<String>| h.as_ref().filter(|h| !h.is_empty() && *h != "?").cloned();
    usable(&endpoint)
        .or_else(|| usable(&ip))
        .unwrap_or_else(|| match asked {
            ServerAddr::Tcp { host, .. } => host.clone(),
            ServerAddr::Unix { .. } => "127.0.0.1".into(),
        })
}

fn port_of(v: Option<&Value>) -> Option<u16> {
    v.and_then(int)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
}

/// Parses a `CLUSTER SHARDS` reply. `asked` is the node that answered.
pub(crate) fn parse_cluster_shards(v: &Value, asked: &ServerAddr, tls: bool) -> Result<Topology> {
    let Value::Array(shards) = v else {
        return Err(bad("CLUSTER SHARDS did not return an array"));
    };
    let mut topo = Topology::default();
    for shard in shards {
        let Value::Array(fields) = shard else {
            return Err(bad("shard entry is not a map"));
        };
        let mut slots = Vec::new();
        if let Some(Value::Array(r)) = map_get(fields, "slots") {
            for pair in r.chunks(2) {
                let (Some(a), Some(b)) = (pair.first().and_then(int), pair.get(1).and_then(int))
                else {
                    return Err(bad("slot range is not two integers"));
                };
                if !(0..16384).contains(&a) || !(0..16384).contains(&b) || a > b {
                    return Err(bad("slot range out of bounds"));
                }
                slots.push((a as u16, b as u16));
            }
        }
        let Some(Value::Array(nodes)) = map_get(fields, "nodes") else {
            return Err(bad("shard without nodes"));
        };
        let mut master = None;
        let mut replicas = Vec::new();
        for node in nodes {
            let Value::Array(nf) = node else {
                return Err(bad("node entry is not a map"));
            };
            let port = if tls {
                port_of(map_get(nf, "tls-port")).or_else(|| port_of(map_get(nf, "port")))
            } else {
                port_of(map_get(nf, "port")).or_else(|| port_of(map_get(nf, "tls-port")))
            };
            let Some(port) = port else { continue };
            let host = pick_host(
                map_get(nf, "endpoint").and_then(text),
                map_get(nf, "ip").and_then(text),
                asked,
            );
            let health = map_get(nf, "health")
                .and_then(text)
                .unwrap_or_else(|| "online".into());
            let info = NodeInfo {
                addr: ServerAddr::Tcp { host, port },
                id: map_get(nf, "id").and_then(text).unwrap_or_default(),
                healthy: health == "online",
            };
            match map_get(nf, "role").and_then(text).as_deref() {
                Some("master") => master = Some(info),
                _ => replicas.push(info),
            }
        }
        if slots.is_empty() {
            continue;
        }
        let Some(master) = master else {
            return Err(Error::Cluster(format!(
                "slots {}-{} have no master (failover in progress?)",
                slots[0].0, slots[0].1
            )));
        };
        topo.shards.push(ShardInfo {
            master,
            slots,
            replicas,
        });
    }
    Ok(topo)
}

/// Parses a `CLUSTER SLOTS` reply (servers before Redis 7).
pub(crate) fn parse_cluster_slots(v: &Value, asked: &ServerAddr) -> Result<Topology> {
    let Value::Array(ranges) = v else {
        return Err(bad("CLUSTER SLOTS did not return an array"));
    };
    let mut topo = Topology::default();
    for r in ranges {
        let Value::Array(items) = r else {
            return Err(bad("slot range entry is not an array"));
        };
        if items.len() < 3 {
            return Err(bad("slot range entry too short"));
        }
        let (Some(a), Some(b)) = (int(&items[0]), int(&items[1])) else {
            return Err(bad("slot range bounds are not integers"));
        };
        if !(0..16384).contains(&a) || !(0..16384).contains(&b) || a > b {
            return Err(bad("slot range out of bounds"));
        }
        let node = |v: &Value| -> Option<NodeInfo> {
            let Value::Array(f) = v else { return None };
            let port = port_of(f.get(1))?;
            let host = pick_host(None, f.first().and_then(text), asked);
            Some(NodeInfo {
                addr: ServerAddr::Tcp { host, port },
                id: f.get(2).and_then(text).unwrap_or_default(),
                healthy: true,
            })
        };
        let master = node(&items[2]).ok_or_else(|| bad("slot range without a master address"))?;
        let replicas: Vec<NodeInfo> = items[3..].iter().filter_map(node).collect();
        match topo
            .shards
            .iter_mut()
            .find(|s| s.master.addr == master.addr)
        {
            Some(s) => s.slots.push((a as u16, b as u16)),
            None => topo.shards.push(ShardInfo {
                master,
                slots: vec![(a as u16, b as u16)],
                replicas,
            }),
        }
    }
    Ok(topo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    fn asked() -> ServerAddr {
        ServerAddr::Tcp {
            host: "10.0.0.9".into(),
            port: 7000,
        }
    }

    fn node(id: &str, port: i64, role: &str, endpoint: &str, health: &str) -> Value {
        Value::Array(vec![
            b("id"),
            b(id),
            b("port"),
            Value::Int(port),
            b("ip"),
            b("127.0.0.1"),
            b("endpoint"),
            b(endpoint),
            b("role"),
            b(role),
            b("replication-offset"),
            Value::Int(1),
            b("health"),
            b(health),
        ])
    }

    #[test]
    fn parses_shards() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                b("slots"),
                Value::Array(vec![
                    Value::Int(0),
                    Value::Int(5460),
                    Value::Int(10923),
                    Value::Int(10999),
                ]),
                b("nodes"),
                Value::Array(vec![
                    node("aaa", 7000, "master", "127.0.0.1", "online"),
                    node("bbb", 7003, "replica", "?", "failed"),
                ]),
            ]),
            // A shard without slots (new empty master) is skipped.
            Value::Array(vec![
                b("slots"),
                Value::Array(vec![]),
                b("nodes"),
                Value::Array(vec![node("ccc", 7009, "master", "127.0.0.1", "online")]),
            ]),
        ]);
        let t = parse_cluster_shards(&reply, &asked(), false).unwrap();
        assert_eq!(t.shards.len(), 1);
        let s = &t.shards[0];
        assert_eq!(s.slots, vec![(0, 5460), (10923, 10999)]);
        assert_eq!(s.master.id, "aaa");
        assert_eq!(s.replicas.len(), 1);
        assert!(!s.replicas[0].healthy);
        // "?" endpoint falls back to the ip.
        assert_eq!(
            s.replicas[0].addr,
            ServerAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 7003
            }
        );
        assert_eq!(t.covered_slots(), 5461 + 77);
    }

    #[test]
    fn parses_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(100),
                Value::Array(vec![b(""), Value::Int(7000), b("aaa")]),
                Value::Array(vec![b("127.0.0.2"), Value::Int(7003), b("bbb")]),
            ]),
            Value::Array(vec![
                Value::Int(200),
                Value::Int(300),
                Value::Array(vec![b(""), Value::Int(7000), b("aaa")]),
            ]),
        ]);
        let t = parse_cluster_slots(&reply, &asked()).unwrap();
        assert_eq!(t.shards.len(), 1);
        assert_eq!(t.shards[0].slots, vec![(0, 100), (200, 300)]);
        // Empty ip means "the node you asked".
        assert_eq!(
            t.shards[0].master.addr,
            ServerAddr::Tcp {
                host: "10.0.0.9".into(),
                port: 7000
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_cluster_shards(&Value::Int(3), &asked(), false).is_err());
        assert!(parse_cluster_slots(&Value::Array(vec![Value::Int(1)]), &asked()).is_err());
        let bad_range = Value::Array(vec![Value::Array(vec![
            Value::Int(5),
            Value::Int(99999),
            Value::Array(vec![b("h"), Value::Int(1)]),
        ])]);
        assert!(parse_cluster_slots(&bad_range, &asked()).is_err());
    }
}
