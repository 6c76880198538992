//! Drives `paramiko_agent.py`: one paramiko connection to Sluice, one JSON
//! request and answer per line.
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

use super::{Stack, CLIENT_TIMEOUT};

/// A running paramiko agent.
pub struct Paramiko {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every answer, for secret scans.
    pub transcript: String,
}

impl Paramiko {
    /// Connects with the placeholder key; panics if the connection fails.
    pub async fn connect(stack: &Stack) -> Paramiko {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/paramiko_agent.py"
        );
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(stack.addr.ip().to_string())
            .arg(stack.addr.port().to_string())
            .arg("agent")
            .arg(stack.key_path())
            .arg(stack.dir.path().join("known_hosts"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with paramiko (pip install paramiko)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut agent = Paramiko {
            child,
            stdin,
            lines,
            transcript: String::new(),
        };
        let hello = agent.answer().await;
        assert_eq!(hello["connected"], true, "{hello}");
        agent
    }

    /// Runs `command` on a new exec channel of the same connection.
    pub async fn exec(&mut self, command: &str) -> Value {
        self.request(json!({"op": "exec", "command": command}))
            .await
    }

    /// Runs the pty shell script (see `paramiko_agent.py`).
    pub async fn shell(&mut self) -> Value {
        self.request(json!({"op": "shell"})).await
    }

    async fn request(&mut self, request: Value) -> Value {
        let line = format!("{request}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.answer().await
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(CLIENT_TIMEOUT, self.lines.next_line())
            .await
            .expect("paramiko agent answers in time")
            .unwrap()
            .expect("paramiko agent exited early");
        self.transcript.push_str(&line);
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Paramiko {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
