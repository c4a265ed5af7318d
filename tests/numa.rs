//! Shards configured with `cores: "numa:0"` pin to node 0's CPUs, set their memory
//! policy and serve requests as usual.

mod common;

use std::time::Duration;

use common::TestServer;
use slotline::IoBackend;
use slotline::{Config, Engine, PutChunk};

fn numa_node0_shards_work(backend: IoBackend) {
    let srv = TestServer::start();
    let yaml = format!(
        "remote_url: \"{}\"\nextra_config:\n  cores: \"numa:0\"\n",
        srv.url()
    );
    let mut cfg = match Config::from_yaml_str(&yaml) {
        Ok(c) => c,
        // A host without NUMA information: the config error is the expected outcome.
        Err(e) if !std::path::Path::new("/sys/devices/system/node/node0").exists() => {
            assert!(e.to_string().contains("extra_config.cores"), "{e}");
            common::skip!("no NUMA node 0 in sysfs: only the config error was checked");
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(cfg.numa_node, Some(0));
    cfg.io_backend = backend;
    cfg.request_timeout = Duration::from_secs(20);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    let st = e.stats();
    assert!(st.cores.iter().all(|c| c.is_some()), "{:?}", st.cores);
    e.put(vec![PutChunk::new(
        "n@1@0@aa@bfloat16",
        vec![1u8; 70_000],
        None,
    )])
    .wait()
    .unwrap();
    let got = e.get(&["n@1@0@aa@bfloat16"]).wait().unwrap();
    assert_eq!(got[0].as_ref().unwrap().data.len(), 70_000);
}

both_backends!(numa_node0_shards_work);
