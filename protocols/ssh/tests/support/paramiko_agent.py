"""An agent driving paramiko over one SSH connection to Sluice.

argv: host port user key_file known_hosts. Connects (host key checked
against known_hosts only, RejectPolicy), prints {"connected": true}, then
answers one JSON request per stdin line with one JSON line:
  {"op": "exec", "command": ...}  -> {"status", "stdout", "stderr"}
  {"op": "shell"}                 -> {"status", "output"}: a pty shell, 80x24,
      `stty size`, resized to 100x40, `stty size` again, `exit 0`
Errors are answered as {"error": "Type: message"}.
"""
import json
import sys
import time

import paramiko

DEADLINE = 30


def read_until(chan, text, deadline):
    buf = ""
    while text not in buf:
        if time.time() > deadline:
            raise TimeoutError(f"waiting for {text!r}, got {buf!r}")
        if chan.recv_ready():
            buf += chan.recv(4096).decode(errors="replace")
        else:
            time.sleep(0.02)
    return buf


def shell(client):
    chan = client.invoke_shell(term="xterm", width=80, height=24)
    deadline = time.time() + DEADLINE
    chan.send("stty size\n")
    out = read_until(chan, "24 80", deadline)
    chan.resize_pty(width=100, height=40)
    chan.send("stty size\n")
    out += read_until(chan, "40 100", deadline)
    chan.send("exit 0\n")
    while not chan.exit_status_ready():
        if time.time() > deadline:
            raise TimeoutError("shell did not exit")
        if chan.recv_ready():
            out += chan.recv(4096).decode(errors="replace")
        else:
            time.sleep(0.02)
    return {"status": chan.recv_exit_status(), "output": out}


def execute(client, command):
    _, stdout, stderr = client.exec_command(command, timeout=DEADLINE)
    out = stdout.read().decode()
    err = stderr.read().decode()
    return {"status": stdout.channel.recv_exit_status(), "stdout": out, "stderr": err}


def main():
    host, port, user, key_file, known_hosts = sys.argv[1:6]
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host, int(port), username=user, key_filename=key_file,
                   look_for_keys=False, allow_agent=False, timeout=DEADLINE)
    print(json.dumps({"connected": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "exec":
                res = execute(client, req["command"])
            else:
                res = shell(client)
        except Exception as e:  # reported to the test, which asserts on it
            res = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(res), flush=True)
    client.close()


if __name__ == "__main__":
    main()
