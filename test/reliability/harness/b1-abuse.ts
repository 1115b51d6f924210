import { connect } from 'node:net'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'

/*
 * Helpers for the multipart abuse cases (reliability.md section 5, B 7-12): how long an answer
 * took and how long the event loop was held meanwhile, and a raw upload that can stop mid-body.
 */

export interface Timed<T> {
  value: T
  /** Wall time of `run`. */
  ms: number
  /** The longest the event loop was blocked while `run` ran (the gateway runs in this process). */
  stallMs: number
}

/** Runs `run` while sampling event-loop delay every 10 ms. */
export async function timed<T>(run: () => Promise<T>): Promise<Timed<T>> {
  const delay = monitorEventLoopDelay({ resolution: 10 })
  delay.enable()
  // The histogram measures from its first tick on: let it tick before the case starts.
  await new Promise((resolve) => setTimeout(resolve, 25))
  const start = performance.now()
  try {
    const value = await run()
    const ms = performance.now() - start
    // An answer read right after a stall would be seen before the sampling timer runs again.
    await new Promise((resolve) => setTimeout(resolve, 25))
    return { value, ms, stallMs: delay.max / 1e6 }
  } finally {
    delay.disable()
  }
}

export interface CutUpload {
  /** The status of the answer, 0 if none came. */
  status: number
  headers: Record<string, string>
  body: string
  /** The gateway closed the connection before `waitMs` ran out. */
  closed: boolean
}

/**
 * Sends `head` and then `bytes` on a fresh connection, awaits `beforeEnd` (so a test can wait for
 * what the gateway does with a partial body), then ends our side (FIN) and reads what comes back.
 */
export async function uploadThenFin(
  port: number,
  head: string,
  bytes: Buffer,
  beforeEnd: () => Promise<void>,
  waitMs = 3000
): Promise<CutUpload> {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => undefined)
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  const chunks: Buffer[] = []
  let closed = false
  socket.on('data', (chunk: Buffer) => chunks.push(chunk))
  const whenClosed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closed = true
      resolve()
    })
  )
  socket.write(head)
  socket.write(bytes)
  await beforeEnd()
  socket.end()
  await Promise.race([whenClosed, new Promise((resolve) => setTimeout(resolve, waitMs))])
  socket.destroy()
  const text = Buffer.concat(chunks).toString('latin1')
  const headerEnd = text.indexOf('\r\n\r\n')
  const headers: Record<string, string> = {}
  for (const line of text.slice(0, Math.max(0, headerEnd)).split('\r\n').slice(1)) {
    const colon = line.indexOf(':')
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  return {
    status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0),
    headers,
    body: headerEnd === -1 ? '' : text.slice(headerEnd + 4),
    closed
  }
}
