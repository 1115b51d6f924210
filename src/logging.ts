import { pino, type DestinationStream, type Logger } from 'pino'
import { safeError } from './errors/safe-error.js'

/**
 * The process logger: JSON lines. Request lines are written by http/request-context and carry no
 * headers; the redaction paths are a second guard for anything that logs an object with headers.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'image-gateway' },
    // pino's own err serializer rebuilds anything with a message, naming a safeError() object's type
    // "Object"; errors logged raw (by fastify) are cut down to what safeError keeps.
    serializers: { err: (value: unknown) => (value instanceof Error ? safeError(value) : value) },
    redact: {
      paths: ['req.headers.authorization', 'req.headers["api-key"]', 'headers.authorization', 'headers["api-key"]', '*.apiKey'],
      censor: '[redacted]'
    }
  }
  return destination === undefined ? pino(options) : pino(options, destination)
}
