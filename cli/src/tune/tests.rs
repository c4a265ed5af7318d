//! `tune` on a fake 2-node host built in a temp dir, and on this machine.

use std::fs;
use std::path::Path;

use super::*;

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// 2 nodes x 4 cores x 2 threads: node0 CPUs 0-3 + siblings 8-11, node1 4-7 + 12-15;
/// eth0 on node 1 with IRQs 40, 41 on CPUs 4 and 5.
fn fake_host(root: &Path) {
    put(root, "sys/devices/system/node/node0/cpulist", "0-3,8-11\n");
    put(root, "sys/devices/system/node/node1/cpulist", "4-7,12-15\n");
    put(root, "sys/devices/system/cpu/online", "0-15\n");
    for cpu in 0..16 {
        let core = cpu % 8;
        let t = format!("sys/devices/system/cpu/cpu{cpu}/topology");
        put(root, &format!("{t}/core_id"), &format!("{}\n", core % 4));
        put(
            root,
            &format!("{t}/physical_package_id"),
            &format!("{}\n", core / 4),
        );
        put(
            root,
            &format!("{t}/thread_siblings_list"),
            &format!("{core},{}\n", core + 8),
        );
    }
    put(root, "sys/class/net/eth0/device/numa_node", "1\n");
    fs::create_dir_all(root.join("sys/class/net/lo")).unwrap();
    put(
        root,
        "proc/interrupts",
        "           CPU0       CPU1\n 40:  1  2  PCI-MSI 1-edge  eth0-TxRx-0\n 41:  1  2  PCI-MSI 2-edge  eth0-TxRx-1\n 50:  0  0  PCI-MSI 3-edge  nvme0q1\n",
    );
    put(root, "proc/irq/40/smp_affinity_list", "4\n");
    put(root, "proc/irq/41/smp_affinity_list", "5\n");
    put(
        root,
        "proc/self/status",
        "Name:\tx\nSeccomp:\t2\nCpus_allowed_list:\t0-15\n",
    );
    put(
        root,
        "proc/self/limits",
        "Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         8388608              8388608              bytes\n",
    );
    put(root, "proc/sys/kernel/io_uring_disabled", "0\n");
    put(root, "proc/sys/net/core/rmem_max", "212992\n");
    put(root, "proc/sys/net/core/wmem_max", "212992\n");
    put(
        root,
        "proc/sys/net/ipv4/tcp_rmem",
        "4096\t131072\t6291456\n",
    );
    put(root, "proc/sys/net/ipv4/tcp_wmem", "4096\t16384\t4194304\n");
    put(
        root,
        "sys/kernel/mm/transparent_hugepage/enabled",
        "always madvise [never]\n",
    );
}

#[test]
fn two_node_fake_host() {
    let root = std::env::temp_dir().join(format!("slotline-tune-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fake_host(&root);
    let h = probe(&root, false);
    fs::remove_dir_all(&root).unwrap();
    assert_eq!(h.nodes, vec![0, 1]);
    assert_eq!(h.cpus.len(), 16);
    assert_eq!(h.cpus[12].node, 1);
    assert_eq!(h.cpus[12].siblings, vec![4, 12]);
    assert_eq!(h.nics.len(), 1, "lo has no device: {:?}", h.nics);
    assert_eq!(h.nics[0].node, Some(1));
    assert_eq!(
        h.nics[0].irqs.iter().map(|i| i.irq).collect::<Vec<_>>(),
        [40, 41]
    );
    assert_eq!(h.memlock, Some(Some(8 << 20)));
    assert_eq!(h.seccomp, Some(2));
    assert_eq!(h.tcp_rmem, Some([4096, 131072, 6291456]));
    assert_eq!(h.thp.as_deref(), Some("never"));

    let p = plan(&h);
    // The NIC's node, one thread per core, IRQ CPUs 4 and 5 left to the kernel.
    assert_eq!(p.node, 1);
    assert_eq!(p.shard_cores, vec![6, 7]);
    let topics: Vec<&str> = p.advice.iter().map(|a| a.topic).collect();
    for t in ["cores", "numa", "memlock", "backend", "sockbuf", "thp"] {
        assert!(topics.contains(&t), "{t} missing: {topics:?}");
    }
    assert!(p
        .advice
        .iter()
        .all(|a| !a.reason.is_empty() && !a.reason.contains('\n')));
    let backend = p.advice.iter().find(|a| a.topic == "backend").unwrap();
    assert!(backend.reason.contains("seccomp"), "{}", backend.reason);
    let json = to_json(&h, &p);
    assert!(json.contains("\"shard_cores\":[6,7]"), "{json}");
    assert!(json.contains("\"nodes\":[0,1]"), "{json}");
    let text = to_text(&h, &p);
    assert!(text.contains("shard 1 -> cpu 7"), "{text}");
}

#[test]
fn irq_advice_when_interrupts_hit_shard_cpus() {
    let root = std::env::temp_dir().join(format!("slotline-tune-irq-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fake_host(&root);
    // Only CPUs 4 and 12 (one core) allowed: the IRQ CPU cannot be avoided.
    put(
        &root,
        "proc/self/status",
        "Seccomp:\t0\nCpus_allowed_list:\t4,12\n",
    );
    let h = probe(&root, false);
    fs::remove_dir_all(&root).unwrap();
    let p = plan(&h);
    assert_eq!(p.shard_cores, vec![4]);
    let irq = p
        .advice
        .iter()
        .find(|a| a.topic == "irq")
        .expect("irq advice");
    assert!(
        irq.setting.contains("/proc/irq/$i/smp_affinity_list"),
        "{}",
        irq.setting
    );
}

#[test]
fn this_machine() {
    let h = probe(Path::new("/"), true);
    assert!(!h.cpus.is_empty());
    assert!(!h.allowed.is_empty());
    let p = plan(&h);
    assert!(!p.shard_cores.is_empty());
    assert!(p.shard_cores.iter().all(|c| h.allowed.contains(c)));
    assert!(p.advice.iter().any(|a| a.topic == "backend"));
}

#[test]
fn cpu_lists_compress() {
    assert_eq!(list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    assert_eq!(list(&[]), "");
}
