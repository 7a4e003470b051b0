// Benchmark (not a test): time from POST /workspaces to Running with the DHCP address the VM obtained,
// then DELETE to Cancelled, for N sequential workspaces against a running vws (./run.sh start).
// Usage: node bench/post-to-running.mjs [N]   (env VWS_API, VWS_TOKEN_FILE as for the CLI)
import { readFileSync } from 'node:fs';

const api = process.env.VWS_API ?? 'http://127.0.0.1:8080';
const token = readFileSync(process.env.VWS_TOKEN_FILE ?? '/var/lib/vws/secrets/demo.token', 'utf8').trim();
const n = Number(process.argv[2] ?? 5);
const call = async (method, path, body) => {
  const res = await fetch(`${api}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
};
const until = async (id, done) => {
  for (;;) {
    const { body } = await call('GET', `/workspaces/${id}`);
    if (body.state === 'Corrupted') throw new Error(`${id} Corrupted: ${body.reason}`);
    if (done(body)) return body;
    await new Promise((r) => setTimeout(r, 50));
  }
};
const up = [];
const down = [];
for (let i = 0; i < n; i++) {
  const t0 = performance.now();
  const { status, body } = await call('POST', '/workspaces', { image: 'sample', memoryMiB: 128 });
  if (status !== 202) throw new Error(`POST answered ${status}: ${JSON.stringify(body)}`);
  await until(body.id, (w) => w.state === 'Running' && w.obtainedIp);
  up.push(performance.now() - t0);
  const t1 = performance.now();
  await call('DELETE', `/workspaces/${body.id}`);
  await until(body.id, (w) => w.state === 'Cancelled');
  down.push(performance.now() - t1);
}
const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return `median ${(q(0.5) / 1000).toFixed(2)} s, min ${(s[0] / 1000).toFixed(2)} s, max ${(s[s.length - 1] / 1000).toFixed(2)} s`;
};
console.log(`POST → Running with DHCP address (n=${n}): ${stats(up)}`);
console.log(`DELETE → Cancelled, nothing left on the node (n=${n}): ${stats(down)}`);
