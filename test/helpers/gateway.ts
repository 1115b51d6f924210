import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { parseConfig } from '../../src/config/load.js'
import type { Config } from '../../src/config/schema.js'
import type { KeyStore } from '../../src/keys/types.js'
import { createLogger } from '../../src/logging.js'

export const PROVIDER_KEY = 'sk-upstream-secret-0123456789abcdef'

export interface LogLine {
  level: number
  msg: string
  [key: string]: unknown
}

export interface Gateway {
  app: FastifyInstance
  config: Config
  /** A key with no limits, made in the gateway's store for the test. */
  key: string
  store: KeyStore
  /** http://127.0.0.1:port */
  url: string
  /** The base URL for an OpenAI SDK client. */
  baseURL: string
  /** The log lines kept (every one written so far, unless `keepLogLines`), raw, and parsed. */
  logText(): string
  logs(): LogLine[]
  close(): Promise<void>
}

export interface ModelSpec {
  name: string
  rulesOf?: string
  hostImages?: boolean
  deployments: { provider: string; model?: string; weight?: number; priority?: number }[]
}

export interface GatewayOptions {
  /** provider id -> base URL (OpenAI-style, ending in /v1) */
  providers: Record<string, string>
  models?: ModelSpec[]
  limits?: Partial<Config['limits']>
  timeouts?: Partial<{ connectMs: number; headersMs: number; bodyIdleMs: number }>
  /** Share state through this Redis (tests with several instances): the config's `redis` section. */
  redis?: { keyPrefix: string } & ({ url: string } | { sentinels: { host: string; port: number }[]; sentinelName: string } | { cluster: { host: string; port: number }[] })
  adminToken?: string
  keys?: Partial<Config['keys']>
  /** Extra keys for every provider entry (e.g. `rehostUrls`). */
  providerExtra?: Record<string, unknown>
  /** Extra config sections, as in the YAML file (e.g. `prices`). */
  extra?: Record<string, unknown>
  /** Keep only the last this many log lines (a run of minutes would otherwise grow the heap with its log); all by default. */
  keepLogLines?: number
  /** Called with each log line, raw, as it is written (kept or not). */
  onLogLine?: (line: string) => void
}

const ALL_MODELS = ['dall-e-2', 'dall-e-3', 'gpt-image-1', 'gpt-image-1-mini', 'gpt-image-1.5', 'gpt-image-2']

/** A gateway on 127.0.0.1:0 whose logs a test can read; config goes through the real loader. */
export async function startGateway(options: GatewayOptions): Promise<Gateway> {
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
    models: options.models ?? ALL_MODELS.map((name) => ({ name, deployments: [{ provider: firstProvider }] })),
    ...(options.redis === undefined ? {} : { redis: options.redis }),
    ...(options.adminToken === undefined ? {} : { admin: { token: options.adminToken } }),
    ...(options.keys === undefined ? {} : { keys: options.keys }),
    ...options.extra
  }
  const config = parseConfig(JSON.stringify(document), { TEST_PROVIDER_KEY: PROVIDER_KEY }, 'test config')
  const lines: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line === '') continue
        options.onLogLine?.(line)
        lines.push(line)
        if (options.keepLogLines !== undefined && lines.length > options.keepLogLines) lines.shift()
      }
      callback()
    }
  })
  const app = await buildApp(config, { logger: createLogger('info', sink) })
  const store = app.keys.backend.store
  const { key } = await store.create({ name: 'test' })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const url = `http://127.0.0.1:${port}`
  return {
    app,
    config,
    key,
    store,
    url,
    baseURL: `${url}/v1`,
    logText: () => lines.join('\n'),
    logs: () => lines.map((l) => JSON.parse(l) as LogLine),
    close: () => app.close()
  }
}

/** Waits until `check` holds, polling; for states that settle asynchronously (sockets closing). */
export async function eventually(check: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (check()) return true
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return check()
}
