/**
 * An error as it may be logged: its type, message, code and stack, and nothing else. Library
 * errors carry more (ioredis attaches the command and its arguments, which include a key's
 * digest); a log serializer would print all of it.
 */
export interface SafeError {
  type: string
  message: string
  code?: string
  stack?: string
  cause?: SafeError
}

export function safeError(err: unknown, depth = 0): SafeError {
  if (!(err instanceof Error)) return { type: typeof err, message: String(err) }
  const out: SafeError = { type: err.name, message: err.message }
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string') out.code = code
  if (err.stack !== undefined) out.stack = err.stack
  if (err.cause !== undefined && depth < 3) out.cause = safeError(err.cause, depth + 1)
  return out
}
