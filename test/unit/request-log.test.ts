/**
 * Secrets never reach the log: requests with bad (or good) tokens, in the header, the query string or the
 * body, leave request lines (a captured pino destination) and answers without the token. No Temporal:
 * every request here is refused before the app would call it, over a lazy client never used.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { Client } from '@temporalio/client';
import pino from 'pino';
import request from 'supertest';
import { createApp } from '../../src/api/app';
import { parseConfig } from '../../src/config/load';
import { tokenDigest } from '../../src/config/secrets';
import { log } from '../../src/log';

const good = `tok-good-${randomBytes(16).toString('hex')}`;
const bad = `tok-bad-${randomBytes(16).toString('hex')}`;
const lines: string[] = [];
const parsed = (ls: string[]) => ls.map((l) => JSON.parse(l) as Record<string, unknown>);
const processLogged: string[] = [];
const logger = pino({ level: 'debug' }, new Writable({ write: (chunk, _enc, done) => (lines.push(String(chunk)), done()) }));
const app = createApp({
  config: parseConfig({}),
  client: new Client(),
  clientTokens: () => [{ digest: tokenDigest(good), principal: { name: 'alice', identity: '/O=Grid/CN=alice', admin: false } }],
  nodeTokens: () => [],
  logger,
});

beforeAll(() => {
  for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const) {
    jest.spyOn(log, level).mockImplementation(((...args: unknown[]) => void processLogged.push(JSON.stringify(args))) as never);
  }
});
afterAll(() => jest.restoreAllMocks());

describe('the request log', () => {
  it('logs a request with a bad token as a 401 line without the token, and the answer does not echo it', async () => {
    const res = await request(app).get('/workspaces').set('authorization', `Bearer ${bad}`);
    expect(res.status).toBe(401);
    expect(res.text).not.toContain(bad);
    expect(lines).toHaveLength(1);
    const line = JSON.parse(lines[0]) as Record<string, unknown>;
    expect(line).toMatchObject({ method: 'GET', route: '/workspaces', status: 401, msg: 'request' });
    expect(line).not.toHaveProperty('client');
    expect(lines[0]).not.toContain(bad);
    expect(lines[0]).not.toMatch(/authorization|bearer/i);
  });

  it('keeps tokens out however they are sent: malformed headers, the query string, a body', async () => {
    const answers = [
      await request(app).get('/workspaces/ws-0123456789ab').set('authorization', `Bearer ${bad} extra`),
      await request(app).get('/status').set('authorization', `Basic ${Buffer.from(`alice:${bad}`).toString('base64')}`),
      await request(app).get(`/workspaces?access_token=${bad}`),
      await request(app).post(`/workspaces/ws-0123456789ab/start?token=${good}`).send({ token: bad }),
      await request(app).post('/workspaces').set('authorization', `Bearer ${bad}`).send({ image: 'sample', token: good }),
      // A good token on a refused body (400, no Temporal needed): the client is named, its token is not.
      await request(app).post('/workspaces').set('authorization', `Bearer ${good}`).send({ image: 'sample', memoryMiB: 'lots' }),
      await request(app).get(`/no/such/${bad}`).set('authorization', `Bearer ${good}`),
    ];
    expect(answers.map((a) => a.status)).toEqual([401, 401, 401, 401, 401, 400, 404]);
    // The 404 names the path its sender chose; only the log must not keep it.
    expect(parsed(lines).find((l) => l.status === 404)).toMatchObject({ route: 'unmatched' });
    for (const a of answers.slice(0, -1)) {
      expect(a.text).not.toContain(bad);
      expect(a.text).not.toContain(good);
    }
    expect(parsed(lines)).toContainEqual(expect.objectContaining({ method: 'POST', route: '/workspaces', status: 400, client: 'alice' }));
    const everything = [...lines, ...processLogged].join('\n');
    expect(lines.length).toBe(8);
    expect(everything).not.toContain(bad);
    expect(everything).not.toContain(good);
    expect(everything).not.toMatch(/authorization|bearer|access_token/i);
  });
});
