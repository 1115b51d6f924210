import { GatewayError } from '../errors/catalogue.js'

const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT'])
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED'
])

export function errorCode(err: unknown): string | undefined {
  if (err === null || typeof err !== 'object') return undefined
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string') return code
  return errorCode((err as { cause?: unknown }).cause)
}

/**
 * An undici failure as the client should see it, by undici's `error.code` (its docs advise matching
 * on the code): 504 when the upstream was too slow, 502 when it could not be reached or broke.
 * 500 stays reserved for our own bugs. The cause is kept for the log, never shown.
 */
export function mapTransportError(err: unknown, providerId: string): GatewayError {
  if (err instanceof GatewayError) return err
  const code = errorCode(err)
  if (code !== undefined && TIMEOUT_CODES.has(code)) {
    return new GatewayError('upstream_timeout', `The upstream provider "${providerId}" did not answer in time.`, {
      cause: err
    })
  }
  if (code !== undefined && UNREACHABLE_CODES.has(code)) {
    return new GatewayError('upstream_unreachable', `The upstream provider "${providerId}" could not be reached.`, {
      cause: err
    })
  }
  return new GatewayError('upstream_bad_response', `The upstream provider "${providerId}" failed.`, { cause: err })
}
