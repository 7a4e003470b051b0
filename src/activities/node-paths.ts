/** Where things live on a node, below the node directory (default `/var/lib/vws/node`). */
import { join } from 'node:path';

/** Paths of one node's directory layout. */
export interface NodePaths {
  dir: string;
  /** Base images by sha256: `<cache>/<sha256>.raw`. */
  cache: string;
  /** Per-workspace directories: overlay, QMP socket, pid file, serial log. */
  workspaces: string;
  /** Site-provided kernels: `<kernels>/<name>/{vmlinuz,initrd.gz}`. */
  kernels: string;
  /** DHCP servers vws runs on this node, one directory per network: `<dhcp>/<network>/`. */
  dhcp: string;
}

/** The layout below `dir`. */
export function nodePaths(dir: string): NodePaths {
  return {
    dir,
    cache: join(dir, 'cache'),
    workspaces: join(dir, 'workspaces'),
    kernels: join(dir, 'kernels'),
    dhcp: join(dir, 'dhcp'),
  };
}

/** Workspace ids are validated by the API; this guards every path built from one all the same. */
export function workspaceDir(paths: NodePaths, workspaceId: string): string {
  if (!/^ws-[0-9a-f]{12}$/.test(workspaceId)) throw new Error(`refusing a path for workspace id ${JSON.stringify(workspaceId)}`);
  return join(paths.workspaces, workspaceId);
}
