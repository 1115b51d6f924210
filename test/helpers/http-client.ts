import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'

export interface RawAnswer {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
  json<T = unknown>(): T
}

export interface RawRequest {
  method?: string
  headers?: Record<string, string>
  /** Written in order; a function is awaited between writes (to pace an upload). */
  body?: (Buffer | (() => Promise<void>))[]
  /** No Content-Length: the body goes chunked. */
  chunked?: boolean
}

/** A plain HTTP request with full control of the body's pacing, for what the SDK cannot express. */
export function sendRaw(url: string, options: RawRequest = {}): Promise<RawAnswer> {
  const pieces = options.body ?? []
  const length = pieces.reduce((sum, p) => (Buffer.isBuffer(p) ? sum + p.length : sum), 0)
  const headers: Record<string, string> = { ...options.headers }
  if (!options.chunked && options.body !== undefined) headers['content-length'] = String(length)
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: options.method ?? 'POST', headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        const body = Buffer.concat(chunks)
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          json: <T>() => JSON.parse(body.toString('utf8')) as T
        })
      })
    })
    req.on('error', reject)
    void (async () => {
      for (const piece of pieces) {
        if (req.destroyed) return
        if (Buffer.isBuffer(piece)) {
          if (!req.write(piece)) await new Promise((r) => req.once('drain', r))
        } else await piece()
      }
      req.end()
    })().catch(reject)
  })
}
