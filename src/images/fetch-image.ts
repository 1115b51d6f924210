import { request, type Dispatcher } from 'undici'
import { GatewayError } from '../errors/catalogue.js'
import { GATEWAY_USER_AGENT } from '../upstream/headers.js'

export interface FetchLimits {
  maxBytes: number
  timeoutMs: number
}

function refused(url: URL | string, why: string, cause?: unknown): GatewayError {
  // The host is named (operators need it); the path and query (often a signed token) are not.
  const where = typeof url === 'string' ? 'an image URL' : `an image at ${url.protocol}//${url.host}`
  return new GatewayError('image_hosting_failed', `The gateway could not fetch ${where} from the upstream's answer: ${why}.`, {
    cause,
    headers: { 'x-should-retry': 'false' }
  })
}

/**
 * One image from a URL in an upstream's answer (never one a client gave): GET once, no redirect
 * followed (undici's request() follows none), 200 only, read up to `maxBytes` within `timeoutMs`.
 */
export async function fetchImage(
  address: string,
  dispatcher: Dispatcher,
  limits: FetchLimits,
  signal: AbortSignal
): Promise<Buffer> {
  if (!URL.canParse(address)) throw refused(address, 'it is not a URL')
  const url = new URL(address)
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw refused(url, 'only http and https URLs are fetched')
  const deadline = AbortSignal.timeout(limits.timeoutMs)
  let answer: Dispatcher.ResponseData
  try {
    answer = await request(url, {
      method: 'GET',
      dispatcher,
      headers: { accept: 'image/*', 'user-agent': GATEWAY_USER_AGENT },
      signal: AbortSignal.any([signal, deadline])
    })
  } catch (err) {
    throw refused(url, deadline.aborted ? `no answer within ${limits.timeoutMs} ms` : 'the connection failed', err)
  }
  try {
    if (answer.statusCode !== 200) throw refused(url, `it answered HTTP ${answer.statusCode}`)
    const declared = Number(answer.headers['content-length'])
    if (declared > limits.maxBytes) throw refused(url, `it is ${declared} bytes, over the ${limits.maxBytes} allowed`)
    const chunks: Buffer[] = []
    let size = 0
    for await (const chunk of answer.body as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > limits.maxBytes) throw refused(url, `it is over the ${limits.maxBytes} bytes allowed`)
      chunks.push(chunk)
    }
    return Buffer.concat(chunks, size)
  } catch (err) {
    if (err instanceof GatewayError) throw err
    throw refused(url, deadline.aborted ? `it took longer than ${limits.timeoutMs} ms` : 'the download broke off', err)
  } finally {
    // Whatever is left unread is not wanted: the connection is closed rather than drained (undici
    // reports that as an error on the body, which nobody is reading any more).
    if (!answer.body.readableEnded && !answer.body.destroyed) {
      answer.body.on('error', () => undefined)
      answer.body.destroy()
    }
  }
}
