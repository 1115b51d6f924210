import type { IncomingHttpHeaders } from 'node:http'

/**
 * Headers are allowlisted both ways. Toward the upstream only what describes the body goes, plus the
 * provider's own credentials; the client's Authorization, cookies and hop-by-hop headers never do.
 */
const FORWARDED_REQUEST_HEADERS = ['accept', 'idempotency-key'] as const

export const GATEWAY_USER_AGENT = 'image-gateway'

export function upstreamRequestHeaders(
  client: IncomingHttpHeaders,
  body: { contentType: string; contentLength: number | null },
  providerHeaders: Readonly<Record<string, string>>
): Record<string, string> {
  const headers: Record<string, string> = {}
  for (const name of FORWARDED_REQUEST_HEADERS) {
    const value = client[name]
    if (typeof value === 'string' && !/[\r\n]/.test(value)) headers[name] = value
  }
  headers['user-agent'] = GATEWAY_USER_AGENT
  // We read upstream error bodies to reshape them; a compressed one could not be.
  headers['accept-encoding'] = 'identity'
  headers['content-type'] = body.contentType
  if (body.contentLength !== null) headers['content-length'] = String(body.contentLength)
  return { ...headers, ...providerHeaders }
}

const PASSED_RESPONSE_HEADERS = new Set([
  'content-type',
  'content-encoding',
  'cache-control',
  'x-request-id',
  'openai-processing-ms',
  'openai-version',
  'retry-after',
  'retry-after-ms',
  'x-should-retry'
])

/**
 * The upstream's answer headers a client may rely on (spec §7.4). `content-length` passes only with
 * a body we relay unchanged; everything else (cookies, hop-by-hop, the provider's organisation) stays.
 */
export function clientResponseHeaders(
  upstream: Readonly<Record<string, string | string[] | undefined>>,
  keepContentLength: boolean
): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(upstream)) {
    if (typeof value !== 'string') continue
    if (PASSED_RESPONSE_HEADERS.has(name) || name.startsWith('x-ratelimit-')) out[name] = value
    else if (keepContentLength && name === 'content-length') out[name] = value
  }
  return out
}
