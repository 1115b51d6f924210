import type { Received } from '../../helpers/fake-upstream.js'
import { PROVIDER_KEY, startGateway, type Gateway, type GatewayOptions, type LogLine } from '../../helpers/gateway.js'

/*
 * A gateway for runs of minutes. test/helpers/gateway.ts keeps every log line by default, and the
 * fake upstream every request body: both grow with the run and would hide (or fake) a leak of the
 * gateway's own in the heap numbers. Here each log line is checked as it is written (secrets,
 * internal errors) and only the last few are kept (startGateway's `onLogLine` and `keepLogLines`);
 * `forgetSettled` drops the upstream's records of requests that are over.
 */

export interface SoakGateway extends Gateway {
  /** Log lines written so far. */
  lineCount(): number
  /** Lines that showed one of `secrets` or an internal error (kept whole, for the report). */
  flagged(): string[]
  /** Secrets to look for in every later line (keys made after the start). */
  watch(secret: string): void
}

const KEEP_LINES = 200

/** startGateway's gateway, with a log that is scanned as it streams and of which only the last lines are kept. */
export async function startSoakGateway(options: GatewayOptions): Promise<SoakGateway> {
  const secrets = [PROVIDER_KEY]
  const flagged: string[] = []
  let count = 0
  const gateway = await startGateway({
    ...options,
    keepLogLines: KEEP_LINES,
    onLogLine(line) {
      count += 1
      if (secrets.some((secret) => line.includes(secret)) || line.includes('"internal_error"')) flagged.push(line)
    }
  })
  secrets.push(gateway.key)
  // What assertNothingLeaked scans for secrets: the flagged lines and the last ones.
  return {
    ...gateway,
    logText: () => [...flagged, gateway.logText()].filter((text) => text !== '').join('\n'),
    logs: () => [...flagged.map((l) => JSON.parse(l) as LogLine), ...gateway.logs()],
    lineCount: () => count,
    flagged: () => [...flagged],
    watch: (secret) => void secrets.push(secret)
  }
}

/**
 * Drops from `received` the records of requests whose answer is over (`over` has them), and their
 * bodies: what remains are the requests still open, which the after-case checks look at.
 */
export function forgetSettled(received: Received[], over: Set<Received>): number {
  let dropped = 0
  for (let i = received.length - 1; i >= 0; i--) {
    const record = received[i]
    if (record !== undefined && over.has(record) && (record.complete || record.aborted)) {
      received.splice(i, 1)
      over.delete(record)
      record.chunks.length = 0
      dropped += 1
    }
  }
  return dropped
}
