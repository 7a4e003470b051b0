/** A plain HTTP file server with Range support (as real image servers and the head's repository have), for tests. */
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

/** A running file server: its base URL, the requests it saw (path and Range header), and close. */
export interface FileServer {
  url: string;
  seen: Array<{ path: string; range?: string }>;
  close(): Promise<void>;
}

/** Serves the files under `root` on 127.0.0.1 (a free port); `bytes=N-` ranges answer 206. */
export async function fileServer(root: string): Promise<FileServer> {
  const seen: FileServer['seen'] = [];
  const server = createServer((req, res) => {
    const path = join(root, decodeURIComponent(new URL(req.url!, 'http://x').pathname.slice(1)));
    seen.push({ path: req.url!, range: req.headers.range });
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      res.writeHead(404).end();
      return;
    }
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    res.writeHead(m ? 206 : 200, { 'content-length': String(size - start), ...(m ? { 'content-range': `bytes ${start}-${size - 1}/${size}` } : {}) });
    if (req.method === 'HEAD') return res.end();
    createReadStream(path, { start }).pipe(res);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, close: () => new Promise((ok) => server.close(() => ok())) };
}
