import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

/*
 * Group F of reliability.md section 5 (Redis faults). test/helpers/redis.ts starts a Redis with
 * persistence off and no DEBUG command, and its restart() starts an empty one. These cases need
 * the Redis of a deployment (docker-compose.yml runs it with append-only persistence): one that
 * comes back with its keys, slots and counters after a stop or a kill -9, and one that accepts
 * `DEBUG SLEEP` (Redis 7 refuses it unless started with --enable-debug-command).
 */

export type RespValue = string | number | null | Error | RespValue[]

export interface PersistentRedis {
  url: string
  port: number
  /** Unique per server: the gateway's keyPrefix. */
  prefix: string
  /** SIGTERM (Redis flushes and exits), then waits for the exit. */
  stop(): Promise<void>
  /** SIGKILL, then waits for the exit. The append-only file is fsynced on every write, so nothing acknowledged is lost. */
  kill(): Promise<void>
  /** SIGSTOP: the sockets stay open and nothing answers. */
  freeze(): void
  thaw(): void
  /** A new process on the same port and directory (it reloads the append-only file); resolves once it answers PING. */
  start(): Promise<void>
  running(): boolean
  /** One command on a fresh connection; undefined when no (complete) answer came within `timeoutMs`. */
  command(args: (string | number)[], timeoutMs?: number): Promise<RespValue | undefined>
  close(): Promise<void>
}

const children = new Set<ChildProcess>()
const directories = new Set<string>()
function killAll(): void {
  for (const child of children) {
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  }
  for (const directory of directories) rmSync(directory, { recursive: true, force: true })
}
process.once('exit', killAll)
// A signal ends the process without 'exit' (SIGALRM is how tap ends a file that outlived its timeout).
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
  const onSignal = (): void => {
    killAll()
    process.off(signal, onSignal)
    process.kill(process.pid, signal)
  }
  process.on(signal, onSignal)
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

/** Parses one RESP2 reply at `offset`; undefined while it is incomplete. */
function parseResp(buffer: Buffer, offset: number): { value: RespValue; next: number } | undefined {
  const lineEnd = buffer.indexOf('\r\n', offset, 'latin1')
  if (lineEnd === -1) return undefined
  const type = String.fromCharCode(buffer[offset] ?? 0)
  const line = buffer.toString('utf8', offset + 1, lineEnd)
  const afterLine = lineEnd + 2
  if (type === '+') return { value: line, next: afterLine }
  if (type === '-') return { value: new Error(line), next: afterLine }
  if (type === ':') return { value: Number(line), next: afterLine }
  if (type === '$') {
    const length = Number(line)
    if (length < 0) return { value: null, next: afterLine }
    if (buffer.length < afterLine + length + 2) return undefined
    return { value: buffer.toString('utf8', afterLine, afterLine + length), next: afterLine + length + 2 }
  }
  if (type === '*') {
    const count = Number(line)
    if (count < 0) return { value: null, next: afterLine }
    const items: RespValue[] = []
    let next = afterLine
    for (let i = 0; i < count; i++) {
      const item = parseResp(buffer, next)
      if (item === undefined) return undefined
      items.push(item.value)
      next = item.next
    }
    return { value: items, next }
  }
  throw new Error(`unexpected RESP type ${JSON.stringify(type)}`)
}

function commandOnce(port: number, args: (string | number)[], timeoutMs: number): Promise<RespValue | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' })
    let received = Buffer.alloc(0)
    const finish = (value: RespValue | undefined): void => {
      socket.destroy()
      resolve(value)
    }
    socket.setTimeout(timeoutMs, () => finish(undefined))
    socket.once('error', () => finish(undefined))
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      try {
        const reply = parseResp(received, 0)
        if (reply !== undefined) finish(reply.value)
      } catch {
        finish(undefined)
      }
    })
    socket.once('connect', () => {
      const encoded = args.map((arg) => `$${Buffer.byteLength(String(arg))}\r\n${String(arg)}\r\n`).join('')
      socket.write(`*${args.length}\r\n${encoded}`)
    })
  })
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

async function spawnServer(port: number, directory: string): Promise<ChildProcess> {
  const args = [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', directory, '--loglevel', 'warning',
    '--save', '', '--appendonly', 'yes', '--appendfsync', 'always',
    // DEBUG SLEEP freezes the server from inside (#39); only loopback clients may send it.
    '--enable-debug-command', 'local'
  ]
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-4_000)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  let spawnError: Error | null = null
  child.once('error', (error) => (spawnError = error))
  children.add(child)
  child.once('exit', () => children.delete(child))
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (spawnError !== null) throw new Error(`redis-server could not be started (is it installed?): ${String(spawnError)}`)
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`redis-server exited while starting: ${output.trim()}`)
    if ((await commandOnce(port, ['PING'], 500)) === 'PONG') return child
    await sleep(25)
  }
  child.kill('SIGKILL')
  throw new Error(`redis-server did not answer PING on port ${port} within 10 s: ${output.trim()}`)
}

/** A private redis-server with append-only persistence (fsync always) and DEBUG allowed from loopback. */
export async function startPersistentRedis(): Promise<PersistentRedis> {
  const port = await freePort()
  const directory = mkdtempSync(join(tmpdir(), 'igw-redis-f-'))
  directories.add(directory)
  let child: ChildProcess | null = await spawnServer(port, directory)
  let closed = false
  const end = async (signal: NodeJS.Signals): Promise<void> => {
    const current = child
    if (current === null) return
    child = null
    // A stopped process only acts on SIGTERM once it runs again.
    current.kill('SIGCONT')
    current.kill(signal)
    await exited(current)
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    prefix: `igwtest:${randomBytes(6).toString('hex')}:`,
    stop: () => end('SIGTERM'),
    kill: () => end('SIGKILL'),
    freeze: () => void child?.kill('SIGSTOP'),
    thaw: () => void child?.kill('SIGCONT'),
    async start() {
      if (closed) throw new Error('start after close')
      if (child !== null) throw new Error('redis-server is already running')
      child = await spawnServer(port, directory)
    },
    running: () => child !== null,
    command: (args, timeoutMs = 1_000) => commandOnce(port, args, timeoutMs),
    async close() {
      if (closed) return
      closed = true
      await end('SIGKILL')
      rmSync(directory, { recursive: true, force: true })
      directories.delete(directory)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Steady traffic: a node loop at a fixed rate over keep-alive connections.
// ---------------------------------------------------------------------------------------------

export interface ShotSpec {
  /** Which series the answer belongs to (a key's role in the case). */
  label: string
  key: string
  body: unknown
  path?: string
}

export interface Shot {
  label: string
  /** When it was sent, ms since the traffic began. */
  sentMs: number
  latencyMs: number
  /** 0: no answer within the client's deadline (a hang) or a connection error. */
  status: number
  code: string | null
  body: string
  headers: IncomingHttpHeaders
}

export interface Traffic {
  shots: Shot[]
  /** ms since the traffic began. */
  now(): number
  /** Stops sending and resolves once every request sent has ended. */
  stop(): Promise<Shot[]>
}

const CLIENT_DEADLINE_MS = 5_000

function send(agent: Agent, baseUrl: string, spec: ShotSpec): Promise<Omit<Shot, 'label' | 'sentMs'>> {
  const payload = Buffer.from(JSON.stringify(spec.body))
  const started = performance.now()
  return new Promise((resolve) => {
    const done = (status: number, body: string, headers: IncomingHttpHeaders): void => {
      let code: string | null = null
      try {
        code = (JSON.parse(body) as { error?: { code?: string } }).error?.code ?? null
      } catch {
        // not JSON: an answer of ours would have been
      }
      resolve({ latencyMs: performance.now() - started, status, code, body, headers })
    }
    const req = httpRequest(
      `${baseUrl}${spec.path ?? '/v1/images/generations'}`,
      {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': String(payload.length), authorization: `Bearer ${spec.key}` },
        timeout: CLIENT_DEADLINE_MS
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () => done(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'), res.headers))
        res.on('error', () => done(0, 'response error', {}))
      }
    )
    req.on('timeout', () => req.destroy(new Error('client deadline')))
    req.on('error', (error) => done(0, String(error), {}))
    req.end(payload)
  })
}

/**
 * Sends `rps` requests a second (`next(i)` says which), each without waiting for the previous
 * ones, over a keep-alive agent; every answer is recorded with its latency.
 */
export function steadyTraffic(baseUrl: string, rps: number, next: (i: number) => ShotSpec | null): Traffic {
  const agent = new Agent({ keepAlive: true, maxSockets: 64 })
  const shots: Shot[] = []
  const inFlight = new Set<Promise<void>>()
  const began = performance.now()
  const now = (): number => performance.now() - began
  const gapMs = 1000 / rps
  let sent = 0
  let stopped = false
  let timer: NodeJS.Timeout | null = null
  const tick = (): void => {
    if (stopped) return
    // Catch up after a slow turn of the event loop, so the rate holds on a loaded machine.
    while (sent * gapMs <= now()) {
      const spec = next(sent)
      sent += 1
      if (spec === null) continue
      const sentMs = now()
      const flight = send(agent, baseUrl, spec).then((answer) => {
        shots.push({ label: spec.label, sentMs, ...answer })
      })
      inFlight.add(flight)
      void flight.finally(() => inFlight.delete(flight))
    }
    timer = setTimeout(tick, Math.max(1, sent * gapMs - now()))
  }
  tick()
  return {
    shots,
    now,
    async stop() {
      stopped = true
      if (timer !== null) clearTimeout(timer)
      await Promise.all([...inFlight])
      agent.destroy()
      return shots
    }
  }
}

/** Counts of each status (and error code) in `shots`, e.g. {"200": 40, "503 service_unavailable": 3}. */
export function tally(shots: Shot[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const shot of shots) {
    const name = shot.code === null ? String(shot.status) : `${shot.status} ${shot.code}`
    counts[name] = (counts[name] ?? 0) + 1
  }
  return counts
}

export function maxLatency(shots: Shot[]): number {
  return shots.reduce((max, shot) => Math.max(max, shot.latencyMs), 0)
}

/** Sends `specs` at `rps` (each without waiting for the previous ones) and resolves with every answer. */
export async function paced(baseUrl: string, rps: number, specs: ShotSpec[]): Promise<Shot[]> {
  const traffic = steadyTraffic(baseUrl, rps, (i) => specs[i] ?? null)
  while (traffic.shots.length < specs.length && traffic.now() < specs.length * (1000 / rps) + CLIENT_DEADLINE_MS + 1_000) {
    await sleep(20)
  }
  return traffic.stop()
}
