import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import { buildApp } from '../../../src/app.js'
import { parseConfig } from '../../../src/config/load.js'
import { createLogger } from '../../../src/logging.js'
import type { Received } from '../../helpers/fake-upstream.js'
import { PROVIDER_KEY, type Gateway, type GatewayOptions, type LogLine } from '../../helpers/gateway.js'

/*
 * A gateway for runs of minutes. test/helpers/gateway.ts keeps every log line, and the fake
 * upstream every request body: both grow with the run and would hide (or fake) a leak of the
 * gateway's own in the heap numbers. Here each log line is checked as it is written (secrets,
 * internal errors) and only the last few are kept; `forgetSettled` drops the upstream's records
 * of requests that are over.
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

/** As startGateway (same config document), with a log that is scanned as it streams and not kept. */
export async function startSoakGateway(options: GatewayOptions): Promise<SoakGateway> {
  const providerIds = Object.keys(options.providers)
  const firstProvider = providerIds[0] ?? 'up'
  const document = {
    server: { host: '127.0.0.1', port: 0, logLevel: 'info' },
    limits: options.limits ?? {},
    providers: providerIds.map((id) => ({
      id,
      type: 'openai',
      baseUrl: options.providers[id],
      apiKey: '${TEST_PROVIDER_KEY}',
      timeouts: options.timeouts ?? {},
      ...options.providerExtra
    })),
    models: options.models ?? ['gpt-image-1', 'dall-e-2'].map((name) => ({ name, deployments: [{ provider: firstProvider }] })),
    ...(options.redis === undefined ? {} : { redis: options.redis }),
    ...options.extra
  }
  const config = parseConfig(JSON.stringify(document), { TEST_PROVIDER_KEY: PROVIDER_KEY }, 'soak config')
  const secrets = [PROVIDER_KEY]
  const recent: string[] = []
  const flagged: string[] = []
  let count = 0
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line === '') continue
        count += 1
        recent.push(line)
        if (recent.length > KEEP_LINES) recent.shift()
        if (secrets.some((secret) => line.includes(secret)) || line.includes('"internal_error"')) flagged.push(line)
      }
      callback()
    }
  })
  const app = await buildApp(config, { logger: createLogger('info', sink) })
  const store = app.keys.backend.store
  const { key } = await store.create({ name: 'soak' })
  secrets.push(key)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const url = `http://127.0.0.1:${port}`
  // What assertNothingLeaked scans for secrets: the flagged lines and the last ones.
  const kept = (): string[] => [...flagged, ...recent]
  return {
    app,
    config,
    key,
    store,
    url,
    baseURL: `${url}/v1`,
    logText: () => kept().join('\n'),
    logs: () => kept().map((l) => JSON.parse(l) as LogLine),
    close: () => app.close(),
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
