//! Keeping passwords out of everything the test kit renders: the Debug output of
//! [`ServerOptions`] (and so of every type holding it) and the logged command line.

use std::fmt;

use crate::process::ServerOptions;

/// Shown instead of a secret.
const MASK: &str = "***";

/// `redis-server` arguments whose following argument is a secret.
const SECRET_FLAGS: [&str; 2] = ["--requirepass", "--masterauth"];

/// `args` (a `redis-server` command line) with every secret replaced by `***`: the
/// value after `--requirepass` / `--masterauth` and ACL password rules (`>pass`,
/// `#hash`).
pub(crate) fn redact_args(args: &[String]) -> Vec<&str> {
    args.iter()
        .enumerate()
        .map(|(i, a)| {
            let after_flag = i > 0 && SECRET_FLAGS.contains(&args[i - 1].as_str());
            if after_flag || a.starts_with('>') || a.starts_with('#') {
                MASK
            } else {
                a.as_str()
            }
        })
        .collect()
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<(&str, &str)> = self
            .acl_users
            .iter()
            .map(|(name, _)| (name.as_str(), MASK))
            .collect();
        f.debug_struct("ServerOptions")
            .field("port", &self.port)
            .field("bind", &self.bind)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("acl_users", &users)
            .field("unix_socket", &self.unix_socket)
            .field("cluster", &self.cluster)
            .field("cluster_node_timeout_ms", &self.cluster_node_timeout_ms)
            .field("maxmemory", &self.maxmemory)
            .field("extra_args", &redact_args(&self.extra_args))
            .field("daemonize", &self.daemonize)
            .field("tls", &self.tls)
            .field("binary", &self.binary)
            .field("cpus", &self.cpus)
            .field("io_threads", &self.io_threads)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_hides_passwords() {
        let opts = ServerOptions {
            password: Some("hunter2".into()),
            acl_users: vec![("bob".into(), "swordfish".into())],
            extra_args: vec![
                "--masterauth".into(),
                "tiger42".into(),
                "--maxclients".into(),
                "9".into(),
            ],
            ..ServerOptions::default()
        };
        let s = format!("{opts:?}");
        for secret in ["hunter2", "swordfish", "tiger42"] {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(
            s.contains("bob") && s.contains("--maxclients") && s.contains(MASK),
            "{s}"
        );
    }

    #[test]
    fn command_line_redacted() {
        let args: Vec<String> = [
            "--port",
            "1",
            "--requirepass",
            "pw",
            "--user",
            "u",
            "on",
            ">pw2",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            redact_args(&args),
            [
                "--port",
                "1",
                "--requirepass",
                MASK,
                "--user",
                "u",
                "on",
                MASK
            ]
        );
    }
}
