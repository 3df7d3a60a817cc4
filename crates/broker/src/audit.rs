//! The audit log: one JSON object per line for each failed authentication, each refused call and
//! each change to topics, users, tokens, certificate mappings, ACLs, tenants and quotas —
//! `{"time": RFC 3339, "principal", "peer", "operation", "resource", "result", "detail"}` —
//! written by one background task, rotated by size (`audit.log` → `audit.log.1` → … →
//! `audit.log.N`, the oldest dropped).
//!
//! Invariants: recording never blocks or fails a request (a full queue drops the event and
//! counts it; the writer logs I/O errors); secrets (passwords, tokens) are never recorded —
//! callers pass names and ids only.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// Events queued for the writer at most.
const QUEUE: usize = 4096;

/// One audited event.
#[derive(Debug, Clone)]
pub(crate) struct AuditEvent {
    /// `User:alice`, `Node:2`; `None` when authentication failed.
    pub(crate) principal: Option<String>,
    pub(crate) peer: Option<SocketAddr>,
    /// `authenticate`, `read`, `create-topic`, `add-acl`, ...
    pub(crate) operation: &'static str,
    /// `topic "orders"`, `user "alice"`, ...
    pub(crate) resource: Option<String>,
    /// `ok`, `denied`, or `failed`.
    pub(crate) result: &'static str,
    pub(crate) detail: Option<String>,
}

/// Where a node's audit events go (cheap to clone; disabled: events are dropped).
#[derive(Debug, Clone, Default)]
pub(crate) struct Audit {
    sender: Option<mpsc::Sender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
}

/// Where and how the log is kept.
#[derive(Debug, Clone)]
pub(crate) struct AuditFile {
    pub(crate) path: PathBuf,
    pub(crate) max_bytes: u64,
    /// Rotated files kept.
    pub(crate) keep: u64,
}

impl Audit {
    /// An audit log writing to `file` (from a task on the current runtime).
    pub(crate) fn start(file: AuditFile) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::task::spawn_blocking(move || write_loop(file, receiver));
        Self {
            sender: Some(sender),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues `event` (dropped, and counted, when the writer is behind).
    pub(crate) fn record(&self, event: AuditEvent) {
        if let Some(sender) = &self.sender
            && sender.try_send(event).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A change made by `caller`, with its outcome.
    pub(crate) fn change<T>(
        &self,
        caller: &crate::auth::Caller,
        operation: &'static str,
        resource: String,
        outcome: &Result<T, tonic::Status>,
    ) {
        self.record(AuditEvent {
            principal: Some(caller.principal.to_string()),
            peer: caller.peer,
            operation,
            resource: Some(resource),
            result: if outcome.is_ok() { "ok" } else { "failed" },
            detail: outcome.as_ref().err().map(|s| s.message().to_string()),
        });
    }
}

fn line(event: &AuditEvent) -> String {
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let value = serde_json::json!({
        "time": time,
        "principal": event.principal,
        "peer": event.peer.map(|p| p.to_string()),
        "operation": event.operation,
        "resource": event.resource,
        "result": event.result,
        "detail": event.detail,
    });
    let mut text = value.to_string();
    text.push('\n');
    text
}

fn write_loop(file: AuditFile, mut receiver: mpsc::Receiver<AuditEvent>) {
    let mut out: Option<std::fs::File> = None;
    let mut size = 0u64;
    while let Some(event) = receiver.blocking_recv() {
        let text = line(&event);
        if out.is_none() {
            match open(&file) {
                Ok((handle, len)) => {
                    out = Some(handle);
                    size = len;
                }
                Err(err) => {
                    tracing::warn!(path = %file.path.display(), %err, "cannot open the audit log");
                    continue;
                }
            }
        }
        if size > 0 && size + text.len() as u64 > file.max_bytes {
            out = None;
            if let Err(err) = rotate(&file) {
                tracing::warn!(path = %file.path.display(), %err, "cannot rotate the audit log");
            }
            match open(&file) {
                Ok((handle, len)) => {
                    out = Some(handle);
                    size = len;
                }
                Err(err) => {
                    tracing::warn!(path = %file.path.display(), %err, "cannot open the audit log");
                    continue;
                }
            }
        }
        if let Some(handle) = out.as_mut() {
            match handle.write_all(text.as_bytes()) {
                Ok(()) => size += text.len() as u64,
                Err(err) => {
                    tracing::warn!(path = %file.path.display(), %err, "cannot write the audit log");
                    out = None;
                }
            }
        }
    }
}

fn open(file: &AuditFile) -> std::io::Result<(std::fs::File, u64)> {
    if let Some(dir) = file.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let handle = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file.path)?;
    let len = handle.metadata()?.len();
    Ok((handle, len))
}

/// `audit.log.(N-1)` → `audit.log.N`, …, `audit.log` → `audit.log.1`.
fn rotate(file: &AuditFile) -> std::io::Result<()> {
    let numbered = |n: u64| {
        let mut name = file.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if file.keep == 0 {
        return std::fs::remove_file(&file.path);
    }
    for n in (1..file.keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(&file.path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_json_lines_and_the_log_rotates() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.log");
        let audit = Audit::start(AuditFile {
            path: path.clone(),
            max_bytes: 4096,
            keep: 2,
        });
        for i in 0..100 {
            audit.record(AuditEvent {
                principal: Some("User:alice".into()),
                peer: None,
                operation: "read",
                resource: Some(format!("topic \"t{i}\"")),
                result: "denied",
                detail: Some("denied: no ACL allows it".into()),
            });
        }
        // The writer is done once the last event is in the current file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains("t99")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer did not finish"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            dir.path().join("audit.log.2").exists(),
            "the log did not rotate twice"
        );
        let mut seen = 0;
        for name in ["audit.log.2", "audit.log.1", "audit.log"] {
            let text = std::fs::read_to_string(dir.path().join(name))?;
            assert!(text.len() as u64 <= 4096, "{name} is over the limit");
            for line in text.lines() {
                let event: serde_json::Value = serde_json::from_str(line)?;
                assert_eq!(event["principal"], "User:alice");
                assert_eq!(event["result"], "denied");
                assert!(event["time"].as_str().is_some_and(|t| t.ends_with('Z')));
                seen += 1;
            }
        }
        assert!(
            !dir.path().join("audit.log.3").exists(),
            "kept more than 2 rotated files"
        );
        assert!(seen > 10, "{seen} events in the kept files");
        Ok(())
    }
}
