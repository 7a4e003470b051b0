/**
 * A reader of server-sent events (`text/event-stream`, as the WHATWG HTML standard defines the format)
 * over a response body (a fetch body, or a node response as the CLI reads it): just what the CLI needs
 * to follow `GET …/events`. Comment lines (keep-alives) and `retry:` are read and dropped.
 */

/** One event as the server sent it. */
export interface ServerEvent {
  /** The `event:` field (`message` when the server named none). */
  event: string;
  /** The `data:` lines joined with newlines. */
  data: string;
  id?: string;
}

/** Yields the events of a stream until it ends (or its reader is cancelled). */
export async function* serverEvents(body: ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>): AsyncGenerator<ServerEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  let event = '';
  let data: string[] = [];
  let id: string | undefined;
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A CR that ends the chunk may be the first half of a CRLF: wait for the next chunk to tell.
      if (nl === buffer.length - 1 && buffer.endsWith('\r')) break;
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        // A blank line dispatches the event, if it had any data.
        if (data.length) yield { event: event || 'message', data: data.join('\n'), ...(id !== undefined ? { id } : {}) };
        event = '';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
  }
}
