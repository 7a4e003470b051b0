/**
 * The operations clients reach as `POST /workspaces/:id/<operation>` and `POST /groups/:id/<operation>`
 * (destroy is `DELETE`), with the body schema each takes. One table, read by the routes that validate
 * bodies and by the OpenAPI document that describes them, so the two cannot disagree.
 */
import { pauseUpdate, rebootUpdate, shutdownSaveUpdate, shutdownUpdate, startUpdate, unpauseUpdate } from '../domain/messages';
import { emptyRequestSchema, shutdownSaveRequestSchema, startRequestSchema } from '../domain/requests';

/** Workspace operations: body schema, the workflow's Update, and whether the Update takes the body as its argument. */
export const WORKSPACE_OPERATIONS = {
  start: { schema: startRequestSchema, update: startUpdate, takesArgs: true },
  pause: { schema: emptyRequestSchema, update: pauseUpdate, takesArgs: false },
  unpause: { schema: emptyRequestSchema, update: unpauseUpdate, takesArgs: false },
  reboot: { schema: emptyRequestSchema, update: rebootUpdate, takesArgs: false },
  shutdown: { schema: emptyRequestSchema, update: shutdownUpdate, takesArgs: false },
  'shutdown-save': { schema: shutdownSaveRequestSchema, update: shutdownSaveUpdate, takesArgs: true },
} as const;

/** Group operations (fanned out to every live member), with their body schema. */
export const GROUP_OPERATIONS = {
  start: startRequestSchema,
  pause: emptyRequestSchema,
  unpause: emptyRequestSchema,
  reboot: emptyRequestSchema,
  shutdown: emptyRequestSchema,
  'shutdown-save': shutdownSaveRequestSchema,
} as const;
