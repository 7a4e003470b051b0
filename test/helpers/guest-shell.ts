/**
 * Drives the testbed guest from outside: its initrd runs an unauthenticated shell on TCP 7000 (testbed
 * guest only, see testbed/README.md). A test sends a script, half-closes, and reads the output until the
 * guest's shell exits.
 */
import { connect } from 'node:net';

/** The port of the testbed guest's control shell. */
export const GUEST_SHELL_PORT = 7000;

/** Runs `script` in the guest at `ip` (reachable from the head) and returns its output. */
export function guestShell(ip: string, script: string, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: ip, port: GUEST_SHELL_PORT });
    let out = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`guest ${ip}: no end of output after ${timeoutMs} ms; so far:\n${out}`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.end(`${script}\n`));
    socket.on('data', (d: string) => (out += d));
    socket.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`guest ${ip}: ${e.message}`));
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

/** Packets received by a busybox `ping -c N` run, from its summary line (`N packets transmitted, M packets received`). */
export function received(pingOutput: string, target: string): number {
  const block = pingOutput.split(`--- ${target} ping statistics ---`)[1];
  const m = block?.match(/(\d+) packets received/);
  if (!m) throw new Error(`no ping summary for ${target} in:\n${pingOutput}`);
  return Number(m[1]);
}
