import { pino, type DestinationStream, type Logger } from 'pino'

/**
 * The process logger: JSON lines. Request lines are written by http/request-context and carry no
 * headers; the redaction paths are a second guard for anything that logs an object with headers.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'image-gateway' },
    redact: {
      paths: ['req.headers.authorization', 'req.headers["api-key"]', 'headers.authorization', 'headers["api-key"]', '*.apiKey'],
      censor: '[redacted]'
    }
  }
  return destination === undefined ? pino(options) : pino(options, destination)
}
