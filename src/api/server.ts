/** The API process: `node dist/api/server.js`. */
import { Client, Connection } from '@temporalio/client';
import { loadConfig } from '../config/load';
import { log } from '../log';
import { createApp } from './app';
import { closeEventStreams } from './events';
import { apiScheme, createApiServer } from './listen';
import { loadTokens } from './tokens';

async function main(): Promise<void> {
  const config = loadConfig();
  const tokens = loadTokens(config);
  const client = new Client({
    connection: await Connection.connect({ address: config.temporal.address }),
    namespace: config.temporal.namespace,
  });
  const app = createApp({ config, client, clientTokens: () => tokens.clients, nodeTokens: () => tokens.nodes });
  // HTTPS (optionally mutual TLS) when api.tls is set.
  const server = createApiServer(config, app).listen(config.api.port, config.api.host, () => {
    log.info({ host: config.api.host, port: config.api.port, scheme: apiScheme(config), clientCertificates: !!config.api.tls?.clientCaFile }, 'API listening');
  });
  // Open event streams would hold close() until their clients leave: end them first.
  const stop = () => {
    closeEventStreams();
    server.close(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  log.fatal({ err: e }, 'API failed to start');
  process.exit(1);
});
