//! Teardown leaves nothing behind: no pins, no attached programs, no test
//! cgroup.
use sluice_tests::{cgroup, ServiceSpec, Stack};

use crate::{assert_status, bearer};

#[test]
fn teardown_leaves_no_cgroup_pin_or_attached_program_behind() {
    let mut stack = Stack::builder("cleanup")
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .start()
        .unwrap();
    let token = stack.token("payments-api").unwrap();
    assert_status(
        &stack
            .curl(&[
                "-H",
                &bearer(&token),
                &stack.url("payments-api", "/v1/charges"),
            ])
            .unwrap(),
        200,
    );

    let agent = stack.sluice.agent(stack.agent()).clone();
    let bpf_dir = stack.sluice.bpf_dir.clone();
    // Before: attached and pinned, so the checks below can fail.
    assert!(stack
        .sluice
        .link_pin(stack.agent())
        .is_some_and(|p| p.exists()));
    let attached = cgroup::attached_programs(&agent.path)
        .unwrap()
        .to_lowercase();
    for hook in [
        "inet4_connect",
        "inet6_connect",
        "sock_ops",
        "inet4_getpeername",
        "inet6_getpeername",
    ] {
        assert!(
            attached.contains(hook),
            "{hook} not attached to {}:\n{attached}",
            agent.rel
        );
    }
    let cgroup_id = cgroup::id(&agent.path).unwrap();
    assert!(!cgroup::links_for_cgroup_id(cgroup_id).unwrap().is_empty());

    let report = stack.sluice.teardown();
    assert!(
        report.errors.is_empty(),
        "teardown problems: {:?}",
        report.errors
    );
    assert!(
        report.uninstall_ok,
        "sluice uninstall failed: {}",
        report.uninstall_output
    );
    assert!(
        !report.pins_left_by_uninstall,
        "sluice uninstall left {} behind",
        bpf_dir.display()
    );
    for (rel, shown) in &report.attached_after_uninstall {
        assert!(
            shown.is_empty(),
            "still attached to {rel} after uninstall:\n{shown}"
        );
    }
    assert!(
        report.links_after_uninstall.is_empty(),
        "links left on the cgroup: {:?}",
        report.links_after_uninstall
    );
    assert!(
        !agent.path.exists(),
        "cgroup {} left behind",
        agent.path.display()
    );
    assert!(
        !bpf_dir.exists(),
        "pin dir {} left behind",
        bpf_dir.display()
    );
    assert!(cgroup::links_for_cgroup_id(cgroup_id).unwrap().is_empty());

    report_stale_leftovers();
}

/// Prints pin dirs and cgroups of earlier test runs whose process is gone
/// (a test binary killed mid-run); they are not this run's doing.
fn report_stale_leftovers() {
    let alive = |name: &str| {
        name.rsplit('-')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut stale = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("sluice-test-") && !alive(&name) {
            stale.push(entry.path());
        }
    }
    if let Ok(mount) = cgroup::cgroup2_mount() {
        for entry in std::fs::read_dir(mount.join("sluice-test"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !alive(name.trim_end_matches("-agent")) {
                stale.push(entry.path());
            }
        }
    }
    if !stale.is_empty() {
        eprintln!("warning: leftovers of earlier, killed test runs (remove with `sluice uninstall` or rm/rmdir): {stale:#?}");
    }
}
