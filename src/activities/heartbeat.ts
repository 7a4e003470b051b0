/** Heartbeats for activities whose work is one long command with no progress of its own to report. */

/** Runs `work`, heartbeating every few seconds so a long call is not mistaken for a dead worker. */
export async function withHeartbeat<T>(beat: (details?: unknown) => void, what: string, work: () => Promise<T>): Promise<T> {
  const timer = setInterval(() => beat({ waiting: what }), 5_000);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}
