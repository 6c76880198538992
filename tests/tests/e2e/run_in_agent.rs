//! `sluice run` started inside an agent cgroup refuses to start: its own
//! upstream connections would be redirected back to itself.
use sluice_tests::{process, ServiceSpec, Stack};

use crate::WAIT;

#[test]
fn sluice_run_inside_an_agent_cgroup_exits_2_naming_the_agent() {
    let stack = Stack::builder("run-in-agent")
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .start()
        .unwrap();
    let bin = sluice_tests::sluice_bin();
    let cfg = stack.sluice.config_path.to_str().unwrap().to_string();
    let mut cmd = stack.sluice.exec_command(
        stack.agent(),
        &[bin.to_str().unwrap(), "--config", &cfg, "run"],
    );
    let out = process::output_with_timeout(&mut cmd, None, WAIT).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains(&format!("agent {:?}", stack.agent())),
        "names the agent: {stderr}"
    );
    // The running daemon is unaffected.
    assert!(stack.sluice.pid().is_some());
}
