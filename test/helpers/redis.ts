import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'

export type RespValue = string | number | null | Error | RespValue[]

export interface RedisOptions {
  /**
   * Append-only persistence, fsynced on every write, as a deployment's Redis has (docker-compose.yml):
   * after stop() or a kill() (kill -9), start() and restart() bring the data back.
   */
  persistent?: boolean
  /** Allows DEBUG (e.g. DEBUG SLEEP, which freezes the server from inside) from loopback clients; Redis 7 refuses it otherwise. */
  debugCommand?: boolean
}

export interface TestRedis {
  url: string
  port: number
  /** Unique per startRedis() call: stores under test use it so that tests never see each other's keys. */
  prefix: string
  /** True when REDIS_URL named a server this helper does not own: stop, kill, freeze, start, restart and command throw. */
  external: boolean
  /** SIGTERM, then waits for the process to exit. */
  stop(): Promise<void>
  /** SIGKILL, then waits for the process to exit. */
  kill(): Promise<void>
  /** SIGSTOP: the socket stays open and nothing answers, the case only a client-side deadline ends. */
  freeze(): void
  thaw(): void
  /** After stop() or kill(): a new process on the same port and directory; resolves once it answers PING. */
  start(): Promise<void>
  /** kill(), then start(): its data is gone, unless the server is `persistent`. */
  restart(): Promise<void>
  /**
   * One command on a fresh connection; undefined when no (complete) answer came within `timeoutMs`
   * (as while the server is frozen). Nothing waits for it unless the caller does.
   */
  command(args: (string | number)[], timeoutMs?: number): Promise<RespValue | undefined>
  /** Kills the process and removes its directory (or, with REDIS_URL, deletes the prefix's keys). Safe to call twice. */
  close(): Promise<void>
}

const INSTALL_HINT =
  'redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install redis-server`), ' +
  'or set REDIS_URL=redis://host:port to run these tests against an existing Redis.'

const OWN_SERVER_INSTALL_HINT =
  'redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install redis-server`). ' +
  'REDIS_URL cannot stand in: a Redis with persistence or DEBUG is one that the tests start themselves.'

const START_TIMEOUT_MS = 10_000

/** Every process and directory this file made, so that none outlives the test process however it ends. */
const running = new Set<ChildProcess>()
const directories = new Set<string>()
function killAll(): void {
  for (const child of running) child.kill('SIGKILL')
  for (const directory of directories) rmSync(directory, { recursive: true, force: true })
}
process.once('exit', killAll)
// A signal ends the process without 'exit'; kill the servers, then let the signal do what it would have.
// SIGALRM is how tap ends a test file that outlived its timeout.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
  const onSignal = (): void => {
    killAll()
    process.off(signal, onSignal)
    process.kill(process.pid, signal)
  }
  process.on(signal, onSignal)
}

function uniquePrefix(): string {
  return `igwtest:${randomBytes(6).toString('hex')}:`
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

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

/** A redis-server's arguments: loopback only, no RDB snapshots, append-only file and DEBUG as `options` say. */
function serverArgs(port: number, directory: string, options: RedisOptions = {}): string[] {
  return [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', directory, '--loglevel', 'warning', '--save', '',
    ...(options.persistent === true ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
    ...(options.debugCommand === true ? ['--enable-debug-command', 'local'] : [])
  ]
}

/** Starts `redis-server args…` and resolves once it answers PING on `port` (a sentinel answers PING too). */
async function spawnRedis(args: string[], port: number, what: string, installHint: string): Promise<ChildProcess> {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
  // Redis logs to stdout and reports fatal configuration errors on stderr; keep the tail of both.
  let output = ''
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-4_000)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  const spawnError = new Promise<never>((_, reject) => {
    child.once('error', (error: NodeJS.ErrnoException) => {
      reject(error.code === 'ENOENT' ? new Error(installHint) : error)
    })
  })
  spawnError.catch(() => {})
  running.add(child)
  child.once('exit', () => running.delete(child))

  const deadline = Date.now() + START_TIMEOUT_MS
  const ready = (async (): Promise<void> => {
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${what} exited while starting on port ${port}: ${output.trim()}`)
      }
      // A raw PING, so that waiting for the server needs no client with its own reconnect logic.
      if ((await commandOnce(port, ['PING'])) === 'PONG') return
      await sleep(25)
    }
    throw new Error(`${what} did not answer PING on port ${port} within ${START_TIMEOUT_MS} ms: ${output.trim()}`)
  })()
  try {
    await Promise.race([ready, spawnError])
  } catch (error) {
    child.kill('SIGKILL')
    throw error
  }
  return child
}

function externalRedis(url: string): TestRedis {
  const parsed = new URL(url)
  const prefix = uniquePrefix()
  const unsupported = (what: string) => (): never => {
    throw new Error(`${what} needs a redis-server started by the tests; unset REDIS_URL to run this case`)
  }
  let closed = false
  return {
    url,
    port: Number(parsed.port || 6379),
    prefix,
    external: true,
    stop: async () => unsupported('stop')(),
    kill: async () => unsupported('kill')(),
    freeze: unsupported('freeze'),
    thaw: unsupported('thaw'),
    start: async () => unsupported('start')(),
    restart: async () => unsupported('restart')(),
    command: async () => unsupported('command')(),
    async close() {
      if (closed) return
      closed = true
      const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
      try {
        await client.connect()
        let cursor = '0'
        do {
          const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500)
          if (keys.length > 0) await client.del(...keys)
          cursor = next
        } while (cursor !== '0')
      } finally {
        client.disconnect()
      }
    }
  }
}

/**
 * A Redis for one test file: REDIS_URL when set (shared, isolated by `prefix`), otherwise a
 * private redis-server on a free loopback port, with persistence off unless `persistent`. With
 * `persistent` or `debugCommand` the server is always a private one, REDIS_URL or not: a server
 * named by a URL may have neither, and the cases that need them stop and freeze it.
 */
export async function startRedis(options: RedisOptions = {}): Promise<TestRedis> {
  const fromEnv = process.env.REDIS_URL
  const ownServer = options.persistent === true || options.debugCommand === true
  if (fromEnv !== undefined && fromEnv !== '' && !ownServer) return externalRedis(fromEnv)

  const port = await freePort()
  const directory = mkdtempSync(join(tmpdir(), 'igw-redis-'))
  directories.add(directory)
  const removeDirectory = (): void => {
    rmSync(directory, { recursive: true, force: true })
    directories.delete(directory)
  }
  const spawnServer = (): Promise<ChildProcess> =>
    spawnRedis(serverArgs(port, directory, options), port, 'redis-server', ownServer ? OWN_SERVER_INSTALL_HINT : INSTALL_HINT)
  let child: ChildProcess
  try {
    child = await spawnServer()
  } catch (error) {
    removeDirectory()
    throw error
  }
  let closed = false

  const signal = async (name: NodeJS.Signals): Promise<void> => {
    // A stopped process only acts on SIGTERM once it runs again.
    if (name === 'SIGTERM') child.kill('SIGCONT')
    child.kill(name)
    await exited(child)
  }
  const start = async (): Promise<void> => {
    if (closed) throw new Error('start after close')
    if (child.exitCode === null && child.signalCode === null) throw new Error('redis-server is already running')
    child = await spawnServer()
  }

  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    prefix: uniquePrefix(),
    external: false,
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
    freeze() {
      child.kill('SIGSTOP')
    },
    thaw() {
      child.kill('SIGCONT')
    },
    start,
    async restart() {
      if (closed) throw new Error('restart after close')
      await signal('SIGKILL')
      await start()
    },
    command: (args, timeoutMs = 1_000) => commandOnce(port, args, timeoutMs),
    async close() {
      if (closed) return
      closed = true
      await signal('SIGKILL')
      removeDirectory()
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Sentinel and Cluster topologies. These always start their own processes, REDIS_URL or not:
// a URL names one server, never a sentinel or a cluster.
// ---------------------------------------------------------------------------------------------

export interface RedisNode {
  host: string
  port: number
}

export interface TestSentinel {
  /** The master's name, as `sentinel monitor` knows it. */
  name: string
  sentinels: RedisNode[]
  masterPort: number
  /** Unique per startRedisSentinel() call, like TestRedis.prefix. */
  prefix: string
  /** Kills every process and removes the directory. Safe to call twice. */
  close(): Promise<void>
}

export interface TestCluster {
  /** Every node, each a master (no replicas) holding a third of the slots. */
  nodes: RedisNode[]
  /** Unique per startRedisCluster() call, like TestRedis.prefix. */
  prefix: string
  /** Kills every process and removes the directory. Safe to call twice. */
  close(): Promise<void>
}

const TOPOLOGY_INSTALL_HINT =
  'redis-server (and, for a cluster, redis-cli) was not found on PATH. Install them ' +
  '(Debian/Ubuntu: `apt-get install redis-server`, which ships both). REDIS_URL cannot stand in: ' +
  'these tests need a sentinel or a cluster that they start themselves.'

const TOPOLOGY_TIMEOUT_MS = 20_000
/** A cluster node also listens on its port + 10000 (the cluster bus). */
const CLUSTER_BUS_OFFSET = 10_000

/** Ports handed out in this process, so that two topologies started at once never share one. */
const handedOut = new Set<number>()

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** A free loopback port not yet handed out here; with `bus`, one whose port + 10000 is free too. */
async function freshPort(bus = false): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = await freePort()
    if (port === 0 || handedOut.has(port)) continue
    if (bus) {
      const busPort = port + CLUSTER_BUS_OFFSET
      if (busPort > 65_535 || handedOut.has(busPort) || !(await portIsFree(busPort))) continue
      handedOut.add(busPort)
    }
    handedOut.add(port)
    return port
  }
  throw new Error(`no free loopback port${bus ? ' with a free cluster bus port (+10000)' : ''} after 200 tries`)
}

/** Parses one RESP2 reply at `offset`; undefined while the reply is still incomplete. */
function parseResp(buffer: Buffer, offset: number): { value: RespValue; next: number } | undefined {
  const lineEnd = buffer.indexOf('\r\n', offset, 'latin1')
  if (lineEnd === -1) return undefined
  const type = String.fromCharCode(buffer[offset] ?? 0)
  const line = buffer.toString('utf8', offset + 1, lineEnd)
  const afterLine = lineEnd + 2
  switch (type) {
    case '+':
      return { value: line, next: afterLine }
    case '-':
      return { value: new Error(line), next: afterLine }
    case ':':
      return { value: Number(line), next: afterLine }
    case '$': {
      const length = Number(line)
      if (length < 0) return { value: null, next: afterLine }
      if (buffer.length < afterLine + length + 2) return undefined
      return { value: buffer.toString('utf8', afterLine, afterLine + length), next: afterLine + length + 2 }
    }
    case '*': {
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
    default:
      throw new Error(`unexpected RESP type ${JSON.stringify(type)}`)
  }
}

/** One raw command on a fresh socket: undefined when nothing (complete) answers within `timeoutMs`. */
function commandOnce(port: number, args: (string | number)[], timeoutMs = 500): Promise<RespValue | undefined> {
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
      const encoded = args.map(String).map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join('')
      socket.write(`*${args.length}\r\n${encoded}`)
    })
  })
}

/** Polls `check` until it returns true; throws `describe()` after the deadline. */
async function waitUntil(check: () => Promise<boolean>, timeoutMs: number, describe: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() >= deadline) throw new Error(describe())
    await sleep(50)
  }
}

/** The processes and directory of one topology, killed and removed together. */
class Topology {
  readonly directory = mkdtempSync(join(tmpdir(), 'igw-redis-topology-'))
  private readonly children: ChildProcess[] = []
  private closed = false

  constructor() {
    directories.add(this.directory)
  }

  add(child: ChildProcess): void {
    this.children.push(child)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.all(
      this.children.map(async (child) => {
        child.kill('SIGCONT')
        child.kill('SIGKILL')
        await exited(child)
      })
    )
    rmSync(this.directory, { recursive: true, force: true })
    directories.delete(this.directory)
  }

  /** Runs `start`; if it throws, everything started so far is killed and removed before rethrowing. */
  async starting<T>(start: () => Promise<T>): Promise<T> {
    try {
      return await start()
    } catch (error) {
      await this.close()
      throw error
    }
  }
}

/**
 * A master redis-server and one sentinel monitoring it (quorum 1), each on a free loopback port.
 * Resolves once the sentinel names the master in SENTINEL get-master-addr-by-name.
 */
export async function startRedisSentinel(): Promise<TestSentinel> {
  const topology = new Topology()
  const name = `igw-${randomBytes(4).toString('hex')}`
  return topology.starting(async () => {
    const masterPort = await freshPort()
    topology.add(await spawnRedis(serverArgs(masterPort, topology.directory), masterPort, 'redis-server (sentinel master)', TOPOLOGY_INSTALL_HINT))

    const sentinelPort = await freshPort()
    // The sentinel rewrites its configuration file, so it must be one of ours in a writable directory.
    const conf = join(topology.directory, `sentinel-${sentinelPort}.conf`)
    writeFileSync(
      conf,
      [
        `port ${sentinelPort}`,
        'bind 127.0.0.1',
        `dir ${topology.directory}`,
        'loglevel warning',
        'sentinel resolve-hostnames no',
        `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`,
        `sentinel down-after-milliseconds ${name} 1000`,
        ''
      ].join('\n')
    )
    topology.add(await spawnRedis([conf, '--sentinel'], sentinelPort, 'redis-server --sentinel', TOPOLOGY_INSTALL_HINT))

    let last: RespValue | undefined
    await waitUntil(
      async () => {
        last = await commandOnce(sentinelPort, ['SENTINEL', 'get-master-addr-by-name', name])
        return Array.isArray(last) && last[0] === '127.0.0.1' && last[1] === String(masterPort)
      },
      TOPOLOGY_TIMEOUT_MS,
      () =>
        `the sentinel on port ${sentinelPort} did not name master ${name} at 127.0.0.1:${masterPort} ` +
        `within ${TOPOLOGY_TIMEOUT_MS} ms (last reply: ${String(last)})`
    )
    return {
      name,
      sentinels: [{ host: '127.0.0.1', port: sentinelPort }],
      masterPort,
      prefix: uniquePrefix(),
      close: () => topology.close()
    }
  })
}

/** Runs redis-cli and resolves with its output; rejects with that output when it fails. */
function redisCli(args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('redis-cli', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    running.add(child)
    let output = ''
    const keep = (chunk: Buffer): void => {
      output = (output + chunk.toString('utf8')).slice(-8_000)
    }
    child.stdout?.on('data', keep)
    child.stderr?.on('data', keep)
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      running.delete(child)
      reject(error.code === 'ENOENT' ? new Error(TOPOLOGY_INSTALL_HINT) : error)
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      running.delete(child)
      if (code === 0) resolve(output)
      else reject(new Error(`redis-cli ${args.join(' ')} failed (${signal ?? `exit ${String(code)}`}): ${output.trim()}`))
    })
  })
}

function clusterInfo(reply: RespValue | undefined): Map<string, string> {
  const fields = new Map<string, string>()
  if (typeof reply !== 'string') return fields
  for (const line of reply.split(/\r?\n/)) {
    const colon = line.indexOf(':')
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim())
  }
  return fields
}

/**
 * Three redis-server cluster nodes (masters, no replicas) on free loopback ports whose cluster
 * bus ports (+10000) are free too, joined by `redis-cli --cluster create`. Resolves once every
 * node reports cluster_state:ok with all three nodes known and all 16384 slots served.
 */
export async function startRedisCluster(): Promise<TestCluster> {
  const topology = new Topology()
  const size = 3
  return topology.starting(async () => {
    const ports: number[] = []
    for (let i = 0; i < size; i++) ports.push(await freshPort(true))
    // allSettled, so that a node that started is killed with the rest even when another did not.
    const started = await Promise.allSettled(
      ports.map((port) =>
        spawnRedis(
          [
            ...serverArgs(port, topology.directory),
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            join(topology.directory, `nodes-${port}.conf`)
          ],
          port,
          'redis-server (cluster node)',
          TOPOLOGY_INSTALL_HINT
        )
      )
    )
    for (const result of started) if (result.status === 'fulfilled') topology.add(result.value)
    for (const result of started) if (result.status === 'rejected') throw result.reason

    await redisCli(
      ['--cluster', 'create', ...ports.map((port) => `127.0.0.1:${port}`), '--cluster-replicas', '0', '--cluster-yes'],
      TOPOLOGY_TIMEOUT_MS
    )

    const last = new Map<number, string>()
    await waitUntil(
      async () => {
        const infos = await Promise.all(ports.map((port) => commandOnce(port, ['CLUSTER', 'INFO'])))
        return infos.every((reply, i) => {
          const info = clusterInfo(reply)
          last.set(ports[i] ?? 0, `state=${info.get('cluster_state')} known=${info.get('cluster_known_nodes')} slots_ok=${info.get('cluster_slots_ok')}`)
          return info.get('cluster_state') === 'ok' && info.get('cluster_known_nodes') === String(size) && info.get('cluster_slots_ok') === '16384'
        })
      },
      TOPOLOGY_TIMEOUT_MS,
      () => `the cluster on ports ${ports.join(', ')} was not ok within ${TOPOLOGY_TIMEOUT_MS} ms: ${[...last].map(([p, s]) => `${p}: ${s}`).join('; ')}`
    )
    return {
      nodes: ports.map((port) => ({ host: '127.0.0.1', port })),
      prefix: uniquePrefix(),
      close: () => topology.close()
    }
  })
}
