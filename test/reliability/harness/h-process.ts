import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import ts from 'typescript'
import { parseConfig } from '../../../src/config/load.js'
import type { Config } from '../../../src/config/schema.js'
import { createBackend } from '../../../src/keys/backend.js'
import type { KeyStore } from '../../../src/keys/types.js'
import { PROVIDER_KEY } from '../../helpers/gateway.js'

/*
 * The gateway as its own process, as `npm start` runs it (node on the compiled cli.js), so signals,
 * uncaught exceptions and the process's exit are the real ones. The compiled files are made from
 * the current source by `buildFromSource`, once per test file: a child started with tap's
 * TypeScript loader spends seconds compiling the same files again, each time, and on a loaded
 * machine four of those starts alone would take most of the file's time budget.
 */

const root = fileURLToPath(new URL('../../..', import.meta.url))
export const DEV_KEY = 'sk-test-h-lifecycle-0123456789abcdef'
/** Imported into the gateway process by `withFaultInjector`: SIGUSR2 throws from a timer. */
const FAULT_INJECTOR = fileURLToPath(new URL('./h-throw-on-sigusr2.ts', import.meta.url))

async function typescriptFiles(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { recursive: true, withFileTypes: true })
  return entries.filter((entry) => entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')).map((entry) => join(entry.parentPath, entry.name))
}

/**
 * src/ and the fault injector compiled file by file (types are tsc's job, not this one's) into a
 * temp folder that resolves packages from the project's node_modules. Returns that folder.
 */
export async function buildFromSource(t: Test): Promise<string> {
  const out = await mkdtemp(join(tmpdir(), 'h-lifecycle-build-'))
  t.teardown(() => rm(out, { recursive: true, force: true }))
  await writeFile(join(out, 'package.json'), JSON.stringify({ type: 'module' }))
  await symlink(join(root, 'node_modules'), join(out, 'node_modules'), 'dir')
  const options: ts.CompilerOptions = { target: ts.ScriptTarget.ES2023, module: ts.ModuleKind.ES2022, verbatimModuleSyntax: true, esModuleInterop: true }
  for (const file of [...(await typescriptFiles(join(root, 'src'))), FAULT_INJECTOR]) {
    const { outputText } = ts.transpileModule(await readFile(file, 'utf8'), { compilerOptions: options, fileName: file })
    const target = join(out, relative(root, file)).replace(/\.ts$/, '.js')
    await mkdir(dirname(target), { recursive: true })
    await writeFile(target, outputText)
  }
  return out
}

export interface LogLine {
  level: number
  msg: string
  [key: string]: unknown
}

export interface GatewayProcess {
  child: ChildProcess
  port: number
  url: string
  /** Settles when the process has exited, with its code and when (Date.now()). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>
  /** stdout and stderr, as written so far. */
  output(): string
  /** The JSON log lines written so far. */
  logs(): LogLine[]
  /** Resolves with the first log line whose message matches, waiting for it. */
  logLine(msg: RegExp, timeoutMs?: number): Promise<LogLine | undefined>
}

export interface ProcessOptions {
  /** From buildFromSource. */
  build: string
  upstreamBaseUrl: string
  shutdownGraceMs: number
  /** Load the SIGUSR2 fault injector (case 49). */
  withFaultInjector?: boolean
  /** Keys and counters in this Redis (else the in-process store, with DEV_KEY). */
  redis?: { url: string; keyPrefix: string }
}

/** The gateway's config file, as a document. */
function configDocument(options: ProcessOptions): Record<string, unknown> {
  return {
    server: { host: '127.0.0.1', port: 0, logLevel: 'info', shutdownGraceMs: options.shutdownGraceMs },
    providers: [{ id: 'up', type: 'openai', baseUrl: options.upstreamBaseUrl, apiKey: '${TEST_PROVIDER_KEY}' }],
    models: [{ name: 'gpt-image-1', deployments: [{ provider: 'up' }] }],
    ...(options.redis === undefined ? {} : { redis: options.redis })
  }
}

/** The key store the process will use, opened in the test's process (for a Redis store: the same data). Closed at teardown. */
export function sharedStore(t: Test, options: ProcessOptions): KeyStore {
  const config: Config = parseConfig(JSON.stringify(configDocument(options)), { TEST_PROVIDER_KEY: PROVIDER_KEY }, 'test config')
  const { store } = createBackend(config)
  t.teardown(() => store.close())
  return store
}

/**
 * True when the key holds no concurrency slot and no budget reservation: a probe admission with a
 * concurrency of 1 and a budget of exactly what is spent plus one micro-USD passes (and is released).
 */
export async function holdsNothing(store: KeyStore, keyId: string): Promise<boolean> {
  const spent = await store.spentMicroUsd(keyId)
  const ticket = `probe-${Date.now()}`
  const result = await store.admit({ keyId, ticket, images: 0, imagesPerMinute: null, concurrency: 1, reserveMicroUsd: 1, budgetMicroUsd: spent + 1, leaseMs: 60_000, nowMs: Date.now() })
  if (result.ok) await store.settle(keyId, ticket, { requests: 0, images: 0, inputTokens: 0, outputTokens: 0, costMicroUsd: 0 }, Date.now())
  return result.ok
}

/** Starts the compiled `src/cli.ts` on 127.0.0.1:0 with a config file in a temp folder; killed at teardown if still up. */
export async function startGatewayProcess(t: Test, options: ProcessOptions): Promise<GatewayProcess> {
  const directory = await mkdtemp(join(tmpdir(), 'h-lifecycle-'))
  t.teardown(() => rm(directory, { recursive: true, force: true }))
  const configPath = join(directory, 'gateway.yaml')
  await writeFile(configPath, JSON.stringify(configDocument(options)))
  const env: NodeJS.ProcessEnv = { ...process.env, GATEWAY_CONFIG: configPath, GATEWAY_DEV_KEY: DEV_KEY, TEST_PROVIDER_KEY: PROVIDER_KEY }
  for (const name of ['NODE_OPTIONS', 'PORT', 'HOST', 'REDIS_URL', 'ADMIN_TOKEN', 'LOG_LEVEL', 'PUBLIC_BASE_URL']) delete env[name]
  const injector = join(options.build, relative(root, FAULT_INJECTOR)).replace(/\.ts$/, '.js')
  const preload = options.withFaultInjector === true ? [`--import=${injector}`] : []
  const child = spawn(process.execPath, [...preload, join(options.build, 'src/cli.js')], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, at: Date.now() }))
  )
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let text = ''
  const waiters = new Set<() => void>()
  const onData = (chunk: Buffer): void => {
    text += chunk.toString('utf8')
    for (const wake of waiters) wake()
  }
  child.stdout.on('data', onData)
  child.stderr.on('data', onData)
  const logs = (): LogLine[] =>
    text
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as LogLine)
  const logLine = async (msg: RegExp, timeoutMs = 20_000): Promise<LogLine | undefined> => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const found = logs().find((line) => msg.test(line.msg))
      if (found !== undefined || Date.now() > deadline || child.exitCode !== null) return found
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          waiters.delete(wake)
          resolve()
        }
        waiters.add(wake)
        setTimeout(wake, 100)
      })
    }
  }
  const ready = await logLine(/^image-gateway ready$/, 30_000)
  const port = Number(/Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(text)?.[1] ?? 0)
  if (ready === undefined || port === 0) throw new Error(`the gateway did not start:\n${text}`)
  return { child, port, url: `http://127.0.0.1:${port}`, exited, output: () => text, logs, logLine }
}

export interface Answer {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
  /** When the answer ended (Date.now()). */
  at: number
}

export interface Cut {
  /** The error the client saw instead of a whole answer (ECONNRESET, 'aborted', ...). */
  error: string
  /** Set when the headers had arrived before the cut. */
  status?: number
  at: number
}

/** A JSON image generation on its own connection: a whole answer, or how it was cut. */
export function generate(port: number, body: Record<string, unknown>, key = DEV_KEY): Promise<Answer | Cut> {
  return new Promise((resolve) => {
    const payload = JSON.stringify({ model: 'gpt-image-1', prompt: 'a lighthouse', ...body })
    const req = request(
      { host: '127.0.0.1', port, method: 'POST', path: '/v1/images/generations', agent: false, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' } },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), at: Date.now() }))
        res.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message, status: res.statusCode, at: Date.now() }))
      }
    )
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message, at: Date.now() }))
    req.end(payload)
  })
}

export function isCut(outcome: Answer | Cut): outcome is Cut {
  return 'error' in outcome
}

/** A connection attempt: 'connected' or the error's code (ECONNREFUSED once the listener closed). */
export function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve('connected')
    })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'))
  })
}

export interface Pipelined {
  /** Writes the next request on the same connection, while the first is still in flight. */
  send(raw: string): void
  /** Resolves once the server closed the connection: every byte it sent. */
  closed: Promise<string>
}

/** A raw keep-alive connection carrying one request now and more later (HTTP/1.1 pipelining). */
export function pipelined(port: number, first: string): Pipelined {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => undefined)
  const chunks: Buffer[] = []
  socket.on('data', (chunk: Buffer) => chunks.push(chunk))
  const closed = new Promise<string>((resolve) => socket.once('close', () => resolve(Buffer.concat(chunks).toString('latin1'))))
  socket.write(first)
  return { send: (raw) => socket.write(raw), closed }
}

export function rawGeneration(prompt: string): string {
  const body = JSON.stringify({ model: 'gpt-image-1', prompt })
  return (
    `POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${DEV_KEY}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  )
}

/** The responses in what a connection received, split at each status line (bodies here hold none). */
export function splitResponses(text: string): { status: number; headers: Record<string, string>; body: string }[] {
  const starts: number[] = []
  const statusLine = /HTTP\/1\.1 (\d{3}) /g
  for (let match = statusLine.exec(text); match !== null; match = statusLine.exec(text)) starts.push(match.index)
  return starts.map((start, i) => {
    const one = text.slice(start, starts[i + 1] ?? text.length)
    const headerEnd = one.indexOf('\r\n\r\n')
    const headers: Record<string, string> = {}
    for (const line of one.slice(0, headerEnd).split('\r\n').slice(1)) {
      const colon = line.indexOf(':')
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
    }
    return { status: Number(one.slice(9, 12)), headers, body: headerEnd === -1 ? '' : one.slice(headerEnd + 4) }
  })
}
