import { connect, type Socket } from 'node:net'

/** What came back on a raw connection: the bytes, the status line's code, and whether it closed. */
export interface RawExchange {
  /** The status of the first response, or 0 if none came. */
  status: number
  /** Every byte the server sent. */
  text: string
  headers: Record<string, string>
  /** The part after the first response's header block. */
  body: string
  /** The server closed the connection (FIN or reset) before `waitMs` ran out. */
  closed: boolean
  /** Milliseconds from the first write to the first byte back (or to the end, if none came). */
  firstByteMs: number
}

export interface RawOptions {
  /** Written in order; a number is a pause of that many milliseconds. */
  writes: (string | Buffer | number)[]
  /** How long to wait for the server after the last write. */
  waitMs?: number
  /** End our side (FIN) after the last write. */
  end?: boolean
}

/** Sends bytes exactly as given on a fresh TCP connection, for HTTP no client library would send. */
export async function rawExchange(port: number, options: RawOptions): Promise<RawExchange> {
  const socket: Socket = connect(port, '127.0.0.1')
  socket.on('error', () => undefined)
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  const chunks: Buffer[] = []
  let closed = false
  let firstByteAt = 0
  const start = Date.now()
  socket.on('data', (chunk: Buffer) => {
    if (firstByteAt === 0) firstByteAt = Date.now()
    chunks.push(chunk)
  })
  const closedPromise = new Promise<void>((resolve) => socket.once('close', () => {
    closed = true
    resolve()
  }))
  for (const piece of options.writes) {
    if (typeof piece === 'number') await new Promise((resolve) => setTimeout(resolve, piece))
    else if (!socket.destroyed) socket.write(piece)
  }
  if (options.end === true && !socket.destroyed) socket.end()
  await Promise.race([closedPromise, new Promise((resolve) => setTimeout(resolve, options.waitMs ?? 2000))])
  socket.destroy()
  const text = Buffer.concat(chunks).toString('latin1')
  return {
    ...parseResponse(text),
    text,
    closed,
    firstByteMs: (firstByteAt === 0 ? Date.now() : firstByteAt) - start
  }
}

/**
 * The first HTTP/1.x response in `text`: its status (0 if none), its headers (names in lower
 * case), and what follows its header block ('' while that block is incomplete).
 */
export function parseResponse(text: string): { status: number; headers: Record<string, string>; body: string } {
  const headerEnd = text.indexOf('\r\n\r\n')
  const head = headerEnd === -1 ? text : text.slice(0, headerEnd)
  const headers: Record<string, string> = {}
  for (const line of head.split('\r\n').slice(1)) {
    const colon = line.indexOf(':')
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  return { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0), headers, body: headerEnd === -1 ? '' : text.slice(headerEnd + 4) }
}
