import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'

export interface TestRedis {
  url: string
  port: number
  /** Unique per startRedis() call: stores under test use it so that tests never see each other's keys. */
  prefix: string
  /** True when REDIS_URL named a server this helper does not own: stop, kill, freeze and restart throw. */
  external: boolean
  /** SIGTERM, then waits for the process to exit. */
  stop(): Promise<void>
  /** SIGKILL, then waits for the process to exit. */
  kill(): Promise<void>
  /** SIGSTOP: the socket stays open and nothing answers, the case only a client-side deadline ends. */
  freeze(): void
  thaw(): void
  /** A fresh process on the same port (its data is gone); resolves once it answers PING. */
  restart(): Promise<void>
  /** Kills the process and removes its directory (or, with REDIS_URL, deletes the prefix's keys). Safe to call twice. */
  close(): Promise<void>
}

const INSTALL_HINT =
  'redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install redis-server`), ' +
  'or set REDIS_URL=redis://host:port to run these tests against an existing Redis.'

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
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
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

/** One raw PING, so that waiting for the server needs no client with its own reconnect logic. */
function pingOnce(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' })
    let reply = ''
    const finish = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(500, () => finish(false))
    socket.once('error', () => finish(false))
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString('latin1')
      if (reply.includes('\r\n')) finish(reply.startsWith('+PONG'))
    })
    socket.once('connect', () => socket.write('PING\r\n'))
  })
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

async function spawnServer(port: number, directory: string): Promise<ChildProcess> {
  const child = spawn(
    'redis-server',
    ['--save', '', '--appendonly', 'no', '--port', String(port), '--bind', '127.0.0.1', '--dir', directory, '--loglevel', 'warning'],
    { stdio: ['ignore', 'ignore', 'pipe'] }
  )
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')))
  const spawnError = new Promise<never>((_, reject) => {
    child.once('error', (error: NodeJS.ErrnoException) => {
      reject(error.code === 'ENOENT' ? new Error(INSTALL_HINT) : error)
    })
  })
  spawnError.catch(() => {})
  running.add(child)
  child.once('exit', () => running.delete(child))

  const deadline = Date.now() + START_TIMEOUT_MS
  const ready = (async (): Promise<void> => {
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`redis-server exited while starting on port ${port}: ${stderr.trim()}`)
      }
      if (await pingOnce(port)) return
      await sleep(25)
    }
    throw new Error(`redis-server did not answer PING on port ${port} within ${START_TIMEOUT_MS} ms: ${stderr.trim()}`)
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
    restart: async () => unsupported('restart')(),
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
 * private redis-server on a free loopback port with persistence off.
 */
export async function startRedis(): Promise<TestRedis> {
  const fromEnv = process.env.REDIS_URL
  if (fromEnv !== undefined && fromEnv !== '') return externalRedis(fromEnv)

  const port = await freePort()
  const directory = mkdtempSync(join(tmpdir(), 'igw-redis-'))
  directories.add(directory)
  const removeDirectory = (): void => {
    rmSync(directory, { recursive: true, force: true })
    directories.delete(directory)
  }
  let child: ChildProcess
  try {
    child = await spawnServer(port, directory)
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
    async restart() {
      if (closed) throw new Error('restart after close')
      await signal('SIGKILL')
      child = await spawnServer(port, directory)
    },
    async close() {
      if (closed) return
      closed = true
      await signal('SIGKILL')
      removeDirectory()
    }
  }
}
