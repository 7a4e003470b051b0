import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig, parseConfig } from '../../src/config/load';

describe('the configuration', () => {
  it('has embedded defaults: one qemu node vmm1 and the testbed network', () => {
    const c = parseConfig({});
    expect(c.nodes).toEqual([{ name: 'vmm1', memoryMiB: 2048, cpus: 4, driver: 'qemu', bridge: 'br0', agent: 'worker' }]);
    expect(c.network).toMatchObject({ subnet: '10.213.0.0/24', first: '10.213.0.100', last: '10.213.0.199' });
    expect(c.temporal.prefix).toBe('vws');
    expect(c.node.accel).toBe('tcg');
    expect(c.timeouts.shutdownSeconds).toBe(30);
  });

  it('names every bad field with its path', () => {
    const bad = () =>
      parseConfig({
        network: { name: 'public', subnet: '10.213.0.0/24', gateway: '10.213.0.1', first: '10.9.0.1', last: '10.213.0.5' },
        nodes: [
          { name: 'vmm1', memoryMiB: 1024, cpus: 1 },
          { name: 'vmm1', memoryMiB: 1024, cpus: 1 },
        ],
        api: { port: 'eighty' },
      });
    expect(bad).toThrow(ConfigError);
    expect(bad).toThrow(/network\.first: 10\.9\.0\.1 is outside subnet 10\.213\.0\.0\/24/);
    expect(bad).toThrow(/nodes\.1\.name: duplicate node name vmm1/);
    expect(bad).toThrow(/api\.port:/);
    const sshWithoutHost = () => parseConfig({ nodes: [{ name: 'vmm2', memoryMiB: 1024, cpus: 2, agent: 'ssh' }] });
    expect(sshWithoutHost).toThrow(/nodes\.0\.ssh: node vmm2 has agent ssh but no ssh\.host/);
    const badDriver = () => parseConfig({ nodes: [{ name: 'vmm2', memoryMiB: 1024, cpus: 2, driver: 'kvmtool' }] });
    expect(badDriver).toThrow(/nodes\.0\.driver:/);
  });

  it('refuses unknown settings by name', () => {
    expect(() => parseConfig({ temporal: { adress: 'x:1' } })).toThrow(/temporal.*unknown: adress/);
  });

  it('reads YAML from VWS_CONFIG and applies environment overrides', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vws-config-'));
    const file = join(dir, 'vws.yaml');
    writeFileSync(file, 'temporal:\n  namespace: site\nnodes:\n  - name: vmm7\n    memoryMiB: 4096\n    cpus: 8\n');
    const c = loadConfig({ VWS_CONFIG: file, VWS_TEMPORAL_ADDRESS: '10.213.0.1:7233', VWS_API_PORT: '9090' });
    expect(c.temporal).toMatchObject({ namespace: 'site', address: '10.213.0.1:7233' });
    expect(c.api.port).toBe(9090);
    expect(c.nodes.map((n) => n.name)).toEqual(['vmm7']);
  });

  it('says which file it could not read', () => {
    expect(() => loadConfig({ VWS_CONFIG: '/nonexistent/vws.yaml' })).toThrow(/cannot read VWS_CONFIG=\/nonexistent\/vws.yaml/);
  });
});
