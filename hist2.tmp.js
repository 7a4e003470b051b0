const { Connection, Client } = require('@temporalio/client');
(async () => {
  const c = new Client({ connection: await Connection.connect({ address: '127.0.0.1:7233' }) });
  const h = await c.workflow.getHandle(process.argv[2]).fetchHistory();
  for (const e of h.events) {
    const t = new Date(Number(e.eventTime.seconds) * 1000 + Math.floor(e.eventTime.nanos / 1e6)).toISOString().slice(11, 23);
    const keys = Object.keys(e).filter((k) => k.endsWith('Attributes') && e[k]);
    const a = keys.length ? e[keys[0]] : {};
    let d = '';
    if (a.activityType) d = a.activityType.name;
    if (a.failure) d += ' FAIL ' + (a.failure.message || '').slice(0, 200) + ' / ' + (a.failure.cause?.message || '').slice(0, 200);
    if (a.signalName) d = 'signal ' + a.signalName;
    if (a.updateName || a.acceptedRequest) d = 'update';
    if (a.markerName) d = a.markerName;
    console.log(e.eventId.toString().padStart(4), t, String(e.eventType).replace('EVENT_TYPE_', ''), d);
  }
})();
