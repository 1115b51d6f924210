import { connect } from 'node:net'

/** What a paced raw upload saw: the answer, and how much of the body the server took before and after it. */
export interface PacedUpload {
  status: number
  /** The answer's bytes after its header block (as far as they came). */
  body: string
  headers: string
  /** Body bytes the kernel had accepted (write callbacks fired) when the answer's first byte arrived; -1 if no answer came. */
  flushedAtAnswer: number
  /** Body bytes the kernel accepted in all. */
  flushedTotal: number
  bodyBytes: number
  /** The server ended or reset the connection. */
  closed: boolean
  /**
   * What ended the upload first: an error code (EPIPE, ECONNRESET), 'end' (the server's FIN, after
   * which writing failed), 'stall' (the server stopped reading but kept the connection), 'done'
   * (everything was written); 'end+stall' and 'end+done' when the server half-closed but read on.
   */
  ending: string
  /** Milliseconds from the answer to the connection's end (-1: no answer or not closed). */
  closedAfterAnswerMs: number
}

/**
 * Writes `head` then `body` on a raw connection, `chunkBytes` at a time, waiting for the kernel to
 * take each chunk before the next (so the count of flushed bytes is how much the server let in),
 * until the body is written, the server closes, or nothing drains for `stallMs`.
 */
export async function pacedUpload(port: number, head: string, body: Buffer, options: { chunkBytes?: number; stallMs?: number } = {}): Promise<PacedUpload> {
  const chunkBytes = options.chunkBytes ?? 64 * 1024
  const stallMs = options.stallMs ?? 1500
  // Half-open allowed: after the server's FIN we keep writing, to see whether it still reads.
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  const received: Buffer[] = []
  let flushed = 0
  let flushedAtAnswer = -1
  let answeredAt = 0
  let closedAt = 0
  let ending = ''
  const finished = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      if (flushedAtAnswer === -1) {
        flushedAtAnswer = flushed
        answeredAt = Date.now()
      }
      received.push(chunk)
    })
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (ending === '') ending = err.code ?? 'error'
    })
    socket.on('end', () => {
      if (ending === '') ending = 'end'
    })
    socket.on('close', () => {
      closedAt = Date.now()
      resolve()
    })
  })
  const write = (chunk: Buffer): Promise<boolean> =>
    new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), stallMs)
      socket.write(chunk, (err) => {
        clearTimeout(timer)
        if (err === undefined || err === null) flushed += chunk.length
        resolve(err === undefined || err === null)
      })
    })
  await write(Buffer.from(head, 'latin1'))
  flushed = 0
  let stalled = false
  for (let at = 0; at < body.length && !socket.destroyed && (ending === '' || ending === 'end'); at += chunkBytes) {
    if (!(await write(body.subarray(at, at + chunkBytes)))) {
      stalled = !socket.destroyed && (ending === '' || ending === 'end')
      break
    }
  }
  const outcome = stalled ? 'stall' : 'done'
  if (ending === '') ending = outcome
  else if (ending === 'end' && !socket.destroyed) ending = `end+${outcome}`
  await Promise.race([finished, new Promise((resolve) => setTimeout(resolve, stallMs))])
  const closed = closedAt !== 0 && ending !== 'stall' && ending !== 'done'
  socket.destroy()
  const text = Buffer.concat(received).toString('latin1')
  const split = text.indexOf('\r\n\r\n')
  return {
    status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0),
    headers: split === -1 ? text : text.slice(0, split),
    body: split === -1 ? '' : text.slice(split + 4),
    flushedAtAnswer,
    flushedTotal: flushed,
    bodyBytes: body.length,
    closed,
    ending,
    closedAfterAnswerMs: closed && answeredAt !== 0 ? closedAt - answeredAt : -1
  }
}
