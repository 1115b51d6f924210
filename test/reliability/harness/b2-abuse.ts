import { connect } from 'node:net'
import { Busboy } from '@fastify/busboy'
import type { Received } from '../../helpers/fake-upstream.js'

/*
 * Helpers for the request-abuse cases 13-17 (b-request-abuse.test.ts): raw HTTP requests written
 * byte for byte, reading back the form the upstream received, and proof that a decoy listener
 * would have seen a connection to each of the address spellings a client might try.
 */

/** A raw HTTP/1.1 POST with exactly these header lines (each without its CRLF) and body. */
export function rawPost(path: string, headerLines: string[], body: string | Buffer = ''): Buffer {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body
  const head = [`POST ${path} HTTP/1.1`, ...headerLines, `Content-Length: ${bytes.length}`, '', ''].join('\r\n')
  return Buffer.concat([Buffer.from(head, 'latin1'), bytes])
}

/** A body as HTTP/1.1 chunks of `chunkBytes` (the client sent no Content-Length). */
export function chunked(body: Buffer, chunkBytes: number): Buffer[] {
  const out: Buffer[] = []
  for (let at = 0; at < body.length; at += chunkBytes) {
    const piece = body.subarray(at, at + chunkBytes)
    out.push(Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]))
  }
  out.push(Buffer.from('0\r\n\r\n'))
  return out
}

export interface UpstreamForm {
  fields: [string, string][]
  files: { name: string; filename: string }[]
}

/** The form the upstream received, read back by an independent parser (busboy). */
export function formOf(received: Received): Promise<UpstreamForm> {
  return new Promise((resolve, reject) => {
    const form: UpstreamForm = { fields: [], files: [] }
    const parser = Busboy({ headers: { 'content-type': String(received.headers['content-type']) } })
    parser.on('field', (name: string, value: string) => form.fields.push([name, value]))
    parser.on('file', (name: string, stream: NodeJS.ReadableStream, filename: string) => {
      form.files.push({ name, filename })
      stream.resume()
    })
    parser.on('finish', () => resolve(form))
    parser.on('error', reject)
    parser.end(received.body())
  })
}

/** Opens (and at once closes) a TCP connection to `host:port`; true if it connected. */
export function reaches(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}
