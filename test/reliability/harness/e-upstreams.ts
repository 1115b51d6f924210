import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { createHash } from 'node:crypto'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { connect, type Socket } from 'node:net'
import { gzipSync } from 'node:zlib'
import type { Behaviour } from '../../helpers/fake-upstream.js'
import { rawAnswer } from './faults.js'

/*
 * Helpers of group E (upstream faults, reliability.md section 5 cases 28-37) that the shared
 * fault harness does not have: an upstream whose connect hangs, a client that reads a giant answer
 * without holding it, and a gzip bomb made of many members.
 */

/** An upstream that never accepts: connects to it hang until the caller's connect timeout. */
export interface HungListener {
  port: number
  baseUrl: string
  close(): Promise<void>
}

/**
 * Node accepts every connection a listening socket gets, so a listener that never accepts is a
 * python3 socket with `listen(0)` that never calls accept(), its one-slot accept queue filled by a
 * connection of ours: Linux then drops further SYNs (a full accept queue), and a connect hangs as
 * it does to a host that dropped off the network. Null when python3 is not installed.
 */
export async function startHungListener(): Promise<HungListener | null> {
  let child: ChildProcessWithoutNullStreams
  try {
    child = spawn('python3', ['-c', 'import socket,sys\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()'])
  } catch {
    return null
  }
  const port = await new Promise<number | null>((resolve) => {
    child.once('error', () => resolve(null))
    child.stdout.once('data', (data: Buffer) => resolve(Number(data.toString().trim())))
  })
  if (port === null || !Number.isInteger(port)) return null
  // Fill the accept queue: this one connects, every later SYN is dropped.
  const filler: Socket = connect(port, '127.0.0.1')
  filler.on('error', () => undefined)
  await new Promise<void>((resolve) => filler.once('connect', resolve))
  return {
    port,
    baseUrl: `http://127.0.0.1:${port}/v1`,
    async close() {
      filler.destroy()
      child.stdin.end()
      child.kill()
      await new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())))
    }
  }
}

/** What a client that reads an answer without keeping it saw. */
export interface ReadThrough {
  status: number
  headers: IncomingHttpHeaders
  bytes: number
  sha256: string
  /** The first bytes of the body (up to 64 KiB), for error answers. */
  head: Buffer
  /** The body ended cleanly; false when the connection was cut before the end. */
  ended: boolean
}

/** POSTs `body` and streams the answer, counting and hashing it; nothing is decompressed. */
export function readThrough(url: string, headers: Record<string, string>, body: Buffer): Promise<ReadThrough> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', headers: { ...headers, 'content-length': String(body.length) }, agent: false }, (res) => {
      const hash = createHash('sha256')
      const head: Buffer[] = []
      let headBytes = 0
      let bytes = 0
      let settled = false
      const finish = (ended: boolean): void => {
        if (settled) return
        settled = true
        resolve({ status: res.statusCode ?? 0, headers: res.headers, bytes, sha256: hash.digest('hex'), head: Buffer.concat(head), ended })
      }
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length
        hash.update(chunk)
        if (headBytes < 64 * 1024) {
          head.push(chunk.subarray(0, 64 * 1024 - headBytes))
          headBytes += Math.min(chunk.length, 64 * 1024 - headBytes)
        }
      })
      res.on('end', () => finish(true))
      res.on('error', () => finish(false))
      res.on('close', () => finish(res.complete))
    })
    req.on('error', reject)
    req.end(body)
  })
}

/**
 * `members` gzip members of `memberBytes` zeros each, one after the other: a valid gzip stream
 * (RFC 1952 section 2.2 allows several members) that inflates to members × memberBytes. 160
 * members of 64 MiB: about 10 MB that inflates to 10 GiB.
 */
export function gzipBomb(members: number, memberBytes = 64 * 1024 * 1024): Buffer {
  const member = gzipSync(Buffer.alloc(memberBytes), { level: 9 })
  return Buffer.concat(Array.from({ length: members }, () => member))
}

/** A 200 JSON answer whose bytes are `body` as given, labelled with `encoding`. */
export function encodedAnswer(body: Buffer, encoding: string): Behaviour {
  return rawAnswer(200, 'application/json', body, { 'content-encoding': encoding })
}

/** Milliseconds of CPU (user + system) this process used while `run` ran. */
export async function cpuMsOf<T>(run: () => Promise<T>): Promise<{ value: T; cpuMs: number }> {
  const before = process.cpuUsage()
  const value = await run()
  const used = process.cpuUsage(before)
  return { value, cpuMs: (used.user + used.system) / 1000 }
}
