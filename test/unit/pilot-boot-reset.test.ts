/** `vws-pilot boot-reset`'s decisions: which node, and whether and how it is reset (src/pilot/boot-reset.ts). */
import { bootResetNodeName, bootResetPlan } from '../../src/pilot/boot-reset';
import { PilotUsageError } from '../../src/pilot/options';
import { parseConfig } from '../../src/config/load';

const config = parseConfig({
  node: { dir: '/var/lib/vws/node' },
  nodes: [
    { name: 'vmm1', memoryMiB: 2048, cpus: 4, pilot: true },
    { name: 'xen1', memoryMiB: 1024, cpus: 2, driver: 'xen', pilot: true },
    { name: 'vmm2', memoryMiB: 4096, cpus: 4 },
    { name: 'bench1', memoryMiB: 4096, cpus: 4, driver: 'bench', pilot: true },
  ],
  lrm: { kind: 'slurm' },
  pilot: { secretFile: '/var/lib/vws/secrets/pilot.secret', apiUrl: 'http://10.213.0.1:8080' },
});

describe('boot-reset: the node', () => {
  it('is --node, else VWS_NODE, else the short host name', () => {
    expect(bootResetNodeName('vmm1', { VWS_NODE: 'vmm2' }, 'vmm3.example.org')).toBe('vmm1');
    expect(bootResetNodeName(undefined, { VWS_NODE: 'vmm2' }, 'vmm3.example.org')).toBe('vmm2');
    expect(bootResetNodeName(undefined, { VWS_NODE: '' }, 'vmm3.example.org')).toBe('vmm3');
    expect(bootResetNodeName(undefined, {}, 'xen1')).toBe('xen1');
  });
});

describe('boot-reset: the plan', () => {
  it('resets a QEMU pilot node to its configured memory, in the configured node directory', () => {
    expect(bootResetPlan(config, 'vmm1')).toEqual({ action: 'reset', node: 'vmm1', memory: 'host', configuredMiB: 2048, nodeDir: '/var/lib/vws/node' });
  });

  it("resets a Xen pilot node's dom0 to dom0_mem (read from Xen, not from nodes[].memoryMiB)", () => {
    const plan = bootResetPlan(config, 'xen1');
    expect(plan).toEqual({ action: 'reset', node: 'xen1', memory: 'xen', nodeDir: '/var/lib/vws/node' });
    expect(plan).not.toHaveProperty('configuredMiB');
  });

  it('skips a node that is not a pilot node, and a bench node, saying why', () => {
    expect(bootResetPlan(config, 'vmm2')).toMatchObject({ action: 'skip', reason: expect.stringMatching(/not a pilot node/) });
    expect(bootResetPlan(config, 'bench1')).toMatchObject({ action: 'skip', reason: expect.stringMatching(/bench/) });
  });

  it('refuses a node the configuration does not know, naming --node and the known nodes', () => {
    let err: unknown;
    try {
      bootResetPlan(config, 'vmm9');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PilotUsageError);
    expect((err as PilotUsageError).option).toBe('--node');
    expect((err as Error).message).toMatch(/"vmm9" is not a node of the configuration \(nodes: vmm1, xen1, vmm2, bench1\)/);
  });
});
