//! The project's one parser of `CLUSTER NODES` output, used by the local cluster's
//! readiness waits and by the naive benchmark client (which flushes every master).
//!
//! The engine itself reads the topology with `CLUSTER SHARDS` / `CLUSTER SLOTS`
//! (the library's `cluster::topology`); `CLUSTER NODES` is only needed here, because it is
//! the one view that shows nodes without slots and nodes still in handshake.

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node id.
    pub id: String,
    /// `host:port` without the bus port; the host is empty when the node does not know
    /// its own address yet (`:7000` for `myself`).
    pub addr: String,
    /// The flags (`myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, ...).
    pub flags: Vec<String>,
}

impl ClusterNode {
    /// Whether the node carries `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A master that no node reports as failing (`fail` or `fail?`).
    pub fn is_healthy_master(&self) -> bool {
        self.has_flag("master") && !self.has_flag("fail") && !self.has_flag("fail?")
    }
}

/// Parses `CLUSTER NODES` text; malformed lines are skipped.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let id = f.next()?.to_string();
            // "host:port@bus[,hostname]"
            let addr = f.next()?.split(['@', ',']).next()?.to_string();
            let flags = f.next()?.split(',').map(str::to_string).collect();
            Some(ClusterNode { id, addr, flags })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected
67ed :30002@40002 myself,master - 0 0 2 connected 5461-10922
292f 127.0.0.1:30003@40003,host master - 0 1 3 connected 10923-16383
e7d1 127.0.0.1:30001@40001 master,fail - 0 1 1 disconnected
bad
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[1].addr, ":30002");
        assert_eq!(nodes[2].addr, "127.0.0.1:30003");
        assert!(nodes[0].has_flag("slave"));
        let healthy: Vec<&str> = nodes
            .iter()
            .filter(|n| n.is_healthy_master())
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(healthy, ["67ed", "292f"]);
    }
}
