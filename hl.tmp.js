const { Connection, Client } = require('@temporalio/client');
(async () => {
  const c = new Client({ connection: await Connection.connect({ address: '127.0.0.1:7233' }) });
  const [from, to] = [process.argv[3], process.argv[4]];
  for await (const w of c.workflow.list({ query: `WorkflowId STARTS_WITH "${process.argv[2]}"` })) {
    const h = await c.workflow.getHandle(w.workflowId, w.runId).fetchHistory();
    const sched = {};
    for (const e of h.events) {
      const t = new Date(Number(e.eventTime.seconds) * 1000 + Math.floor(e.eventTime.nanos / 1e6)).toISOString().slice(11, 23);
      const a = e.activityTaskScheduledEventAttributes;
      if (a) sched[e.eventId] = a.activityType.name + '@' + a.taskQueue.name;
      const done = e.activityTaskCompletedEventAttributes || e.activityTaskFailedEventAttributes || e.activityTaskStartedEventAttributes;
      if (t >= from && t <= to && (a || done)) console.log(t, w.workflowId, String(e.eventType).replace('EVENT_TYPE_ACTIVITY_TASK_', ''), a ? sched[e.eventId] : sched[done.scheduledEventId]);
    }
  }
})();
