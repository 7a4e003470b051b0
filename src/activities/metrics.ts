/**
 * vws's own counters from inside activities, through the Temporal SDK's metric meter: they are served
 * with the worker's metrics where the runtime exports them (`telemetry.*WorkerMetrics`) and cost nothing
 * where it does not. Outside an activity (a direct call in a test) there is no meter and nothing is counted.
 */
import { Context } from '@temporalio/activity';

/** Adds `value` to the counter `name` (created on first use; the SDK keeps one per name). */
export function countInActivity(name: string, unit: string, description: string, value: number): void {
  if (value <= 0) return;
  let ctx: Context;
  try {
    ctx = Context.current();
  } catch {
    return; // not in an activity
  }
  ctx.metricMeter.createCounter(name, unit, description).add(value);
}
