//! One agent channel relayed to one upstream channel (RFC 4254 §5, §6).
//!
//! Each direction runs in its own task, so a full window one way never stalls
//! the other. Agent → upstream carries data, EOF, close and the channel
//! requests, each request decided by the [`Gate`] first; upstream → agent
//! carries data, EOF, exit status and signal, and close.
//!
//! The agent's requests are answered at once by the connection handler
//! (RFC 4254 §5.4 replies must come in request order, and russh tracks only
//! the latest `want reply` flag of a channel), so upstream's replies are not
//! relayed: a request upstream refuses ends the agent's channel with the
//! reason on stderr, as a denied one does.
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use russh::{
    client, server, Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig,
};
use tokio::sync::oneshot;

use crate::{
    gate::{Decision, Gate, Operation, SshEvent, Stream},
    DENIED_EXIT_STATUS,
};

/// Environment variables passed upstream (`env` requests, RFC 4254 §6.4);
/// all others are dropped, as Debian's `AcceptEnv LANG LC_*` does.
pub(crate) fn env_passes(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// What one relay needs from its connection.
pub(crate) struct Relay<G: Gate> {
    /// The connection's gate.
    pub gate: Arc<G>,
    /// The agent's login.
    pub login: Arc<G::Login>,
    /// Sends the agent what a channel's write half cannot (`exit-signal`).
    pub server: server::Handle,
}

impl<G: Gate> Clone for Relay<G> {
    fn clone(&self) -> Self {
        Relay {
            gate: self.gate.clone(),
            login: self.login.clone(),
            server: self.server.clone(),
        }
    }
}

/// The writing ends of a relayed channel pair and the state both
/// directions share.
struct Ends {
    agent: ChannelWriteHalf<server::Msg>,
    upstream: ChannelWriteHalf<client::Msg>,
    /// Upstream replies awaited by the agent → upstream task, oldest first.
    pending: Mutex<VecDeque<oneshot::Sender<bool>>>,
    /// Whether output is terminal output to record (set once exec or shell
    /// starts on a session channel).
    recording: AtomicBool,
    /// Whether exec and shell output of this channel is recorded at all
    /// (session channels, not direct-tcpip).
    terminal: bool,
}

impl Ends {
    fn id(&self) -> ChannelId {
        self.agent.id()
    }

    /// Registers a wait for the next upstream reply on this channel.
    fn expect_reply(&self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut q) = self.pending.lock() {
            q.push_back(tx);
        }
        rx
    }

    /// Hands an upstream reply to the oldest waiter.
    fn reply(&self, success: bool) {
        let waiter = self.pending.lock().ok().and_then(|mut q| q.pop_front());
        if let Some(waiter) = waiter {
            let _ = waiter.send(success);
        }
    }
}

impl<G: Gate> Relay<G> {
    /// Relays `agent` ⇄ `upstream` until the agent's channel is closed.
    /// `terminal` says whether exec and shell output is recorded (session
    /// channels; never direct-tcpip).
    pub async fn run(
        self,
        agent: Channel<server::Msg>,
        upstream: Channel<client::Msg>,
        terminal: bool,
    ) {
        let (agent_rx, agent_tx) = agent.split();
        let (upstream_rx, upstream_tx) = upstream.split();
        let ends = Arc::new(Ends {
            agent: agent_tx,
            upstream: upstream_tx,
            pending: Mutex::default(),
            recording: AtomicBool::new(false),
            terminal,
        });
        let channel = u32::from(ends.id());
        let down = tokio::spawn(self.clone().downstream(upstream_rx, ends.clone()));
        if let Err(e) = self.upstream(agent_rx, &ends).await {
            tracing::debug!(channel, "ssh relay agent side: {e}");
        }
        // The agent has closed its channel (or writing upstream failed: close
        // the agent's too; russh ignores a close of a closed channel). Close
        // upstream's: russh does not pass upstream's answering close to the
        // reader of a channel we closed, so the downstream task is ended here
        // (its data has nowhere to go any more).
        let _ = ends.agent.close().await;
        let _ = ends.upstream.close().await;
        down.abort();
        let _ = down.await;
        self.gate
            .record(&self.login, SshEvent::ChannelClose { channel });
    }

    /// Agent → upstream: until the agent closes the channel.
    async fn upstream(
        &self,
        mut agent_rx: ChannelReadHalf,
        ends: &Ends,
    ) -> Result<(), russh::Error> {
        let channel = u32::from(ends.id());
        let upstream = &ends.upstream;
        while let Some(msg) = agent_rx.wait().await {
            match msg {
                ChannelMsg::Data { data } => upstream.data_bytes(data).await?,
                ChannelMsg::ExtendedData { data, ext } => {
                    upstream.extended_data_bytes(ext, data).await?
                }
                ChannelMsg::Eof => upstream.eof().await?,
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    self.gate.record(
                        &self.login,
                        SshEvent::Pty {
                            channel,
                            term: term.clone(),
                            cols: col_width,
                            rows: row_height,
                        },
                    );
                    upstream
                        .request_pty(
                            false,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await?;
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    self.gate.record(
                        &self.login,
                        SshEvent::WindowChange {
                            channel,
                            cols: col_width,
                            rows: row_height,
                        },
                    );
                    upstream
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await?
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } if env_passes(&variable_name) => {
                    upstream
                        .set_env(false, variable_name, variable_value)
                        .await?
                }
                ChannelMsg::Signal { signal } => upstream.signal(signal).await?,
                ChannelMsg::Exec { command, .. } => {
                    let command = String::from_utf8_lossy(&command).into_owned();
                    self.start(Operation::Exec { command }, ends).await?
                }
                ChannelMsg::RequestShell { .. } => self.start(Operation::Shell, ends).await?,
                ChannelMsg::RequestSubsystem { name, .. } => {
                    self.start(Operation::Subsystem { name }, ends).await?
                }
                // Agent forwarding is refused by the connection handler
                // (`agent_request`), X11 likewise; other environment
                // variables and flow control are dropped.
                _ => {}
            }
        }
        Ok(())
    }

    /// An exec, shell or subsystem request: asks the gate, then either
    /// starts it upstream or ends the channel with the refusal on stderr and
    /// exit status [`DENIED_EXIT_STATUS`].
    async fn start(&self, operation: Operation, ends: &Ends) -> Result<(), russh::Error> {
        let id = ends.id();
        let channel = u32::from(id);
        if let Decision::Deny { message } = self.gate.authorize(&self.login, &operation).await {
            self.gate.record(
                &self.login,
                SshEvent::Denied {
                    channel,
                    operation,
                    message: message.clone(),
                },
            );
            return refuse(&ends.agent, &message, Some(DENIED_EXIT_STATUS)).await;
        }
        let terminal = ends.terminal && !matches!(operation, Operation::Subsystem { .. });
        ends.recording.store(terminal, Ordering::Release);
        let reply = ends.expect_reply();
        let upstream = &ends.upstream;
        match &operation {
            Operation::Exec { command } => upstream.exec(true, command.as_bytes()).await?,
            Operation::Shell => upstream.request_shell(true).await?,
            Operation::Subsystem { name } => {
                upstream.request_subsystem(true, name.as_str()).await?
            }
            Operation::Session | Operation::Forward { .. } => {}
        }
        if reply.await.unwrap_or(false) {
            self.gate
                .record(&self.login, SshEvent::Started { channel, operation });
            Ok(())
        } else {
            refuse(&ends.agent, "the upstream host refused the request", None).await
        }
    }

    /// Hands exec or shell output to the gate for the recording, once
    /// recording started on the channel.
    async fn output(&self, ends: &Ends, stream: Stream, data: &Bytes) {
        if ends.recording.load(Ordering::Acquire) {
            let channel = u32::from(ends.id());
            let data = data.clone();
            self.gate.output(&self.login, channel, stream, data).await;
        }
    }

    /// Upstream → agent: until upstream closes the channel (or the agent
    /// side ends this task).
    ///
    /// On a session channel, upstream's EOF is passed on only after its
    /// `exit-status` or `exit-signal` (or with its close). sshd may send EOF
    /// first; an OpenSSH client that has sent its own EOF then closes the
    /// channel at once, and russh answers that close immediately, so an
    /// exit status still on its way through Sluice would arrive after the
    /// close and be lost (the client exits 255: the flaky multiplexed
    /// `echo` of the e2e tests). Holding EOF back keeps sshd's guarantee
    /// that the status comes before the client can close. Forwarded TCP
    /// (`direct-tcpip`) keeps its half-close as sent.
    async fn downstream(self, mut upstream_rx: ChannelReadHalf, ends: Arc<Ends>) {
        let id = ends.id();
        let channel = u32::from(id);
        let agent = &ends.agent;
        let mut held_eof = false;
        while let Some(msg) = upstream_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    self.output(&ends, Stream::Stdout, &data).await;
                    agent.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    self.output(&ends, Stream::Stderr, &data).await;
                    agent.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof if ends.terminal => {
                    held_eof = true;
                    Ok(())
                }
                ChannelMsg::Eof => agent.eof().await,
                ChannelMsg::ExitStatus { exit_status } => {
                    self.gate.record(
                        &self.login,
                        SshEvent::ExitStatus {
                            channel,
                            status: exit_status,
                        },
                    );
                    let sent = agent.exit_status(exit_status).await;
                    sent.and(release_eof(agent, &mut held_eof).await)
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    let signal = signal_name_of(&signal_name);
                    self.gate
                        .record(&self.login, SshEvent::ExitSignal { channel, signal });
                    let _ = self
                        .server
                        .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                        .await;
                    release_eof(agent, &mut held_eof).await
                }
                ChannelMsg::Success | ChannelMsg::Failure => {
                    ends.reply(matches!(msg, ChannelMsg::Success));
                    Ok(())
                }
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if let Err(e) = sent {
                tracing::debug!(channel, "ssh relay upstream side: {e}");
                break;
            }
        }
        // Requests still waiting get a failure (their senders drop here).
        if let Ok(mut q) = ends.pending.lock() {
            q.clear();
        }
        let _ = release_eof(agent, &mut held_eof).await;
        let _ = agent.close().await;
    }
}

/// Sends the agent the EOF [`Relay::downstream`] held back, if any.
async fn release_eof(
    agent: &ChannelWriteHalf<server::Msg>,
    held: &mut bool,
) -> Result<(), russh::Error> {
    if std::mem::take(held) {
        agent.eof().await
    } else {
        Ok(())
    }
}

/// Ends the agent's channel with `message` on stderr and, if given, an exit
/// status. The agent answers with its close, which ends the relay; the
/// upstream channel is closed then.
async fn refuse(
    agent: &ChannelWriteHalf<server::Msg>,
    message: &str,
    exit_status: Option<u32>,
) -> Result<(), russh::Error> {
    agent
        .extended_data_bytes(1, Bytes::from(format!("sluice: {message}\r\n")))
        .await?;
    if let Some(status) = exit_status {
        agent.exit_status(status).await?;
    }
    agent.eof().await?;
    agent.close().await
}

/// A signal's name without `SIG`, as sent in `exit-signal` (RFC 4254 §6.10).
fn signal_name_of(signal: &Sig) -> String {
    match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_locale_variables_pass() {
        assert!(env_passes("LANG"));
        assert!(env_passes("LC_ALL"));
        assert!(!env_passes("LD_PRELOAD"));
        assert!(!env_passes("PATH"));
        assert!(!env_passes("lang"));
    }

    #[test]
    fn signal_names_have_no_sig_prefix() {
        assert_eq!(signal_name_of(&Sig::TERM), "TERM");
        assert_eq!(signal_name_of(&Sig::Custom("WINCH".into())), "WINCH");
    }
}
