//! The bench's error: a message and an exit code.

/// A bench failure: message and exit code (1 runtime, 2 usage).
#[derive(Debug)]
pub struct BenchError {
    /// Process exit code.
    pub code: u8,
    /// What went wrong.
    pub msg: String,
}

impl BenchError {
    /// Exit code 1.
    pub fn failed(msg: impl Into<String>) -> BenchError {
        BenchError {
            code: 1,
            msg: msg.into(),
        }
    }

    /// Exit code 2.
    pub fn usage(msg: impl Into<String>) -> BenchError {
        BenchError {
            code: 2,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<slotline::Error> for BenchError {
    fn from(e: slotline::Error) -> Self {
        BenchError::failed(e.to_string())
    }
}

impl From<slotline_testkit::Error> for BenchError {
    fn from(e: slotline_testkit::Error) -> Self {
        BenchError::failed(e.to_string())
    }
}
