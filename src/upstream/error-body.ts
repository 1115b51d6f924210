import type { OpenAIErrorBody } from '../errors/catalogue.js'

export function asString(value: unknown): string | null {
  if (typeof value === 'string') return value
  if (typeof value === 'number') return String(value)
  return null
}

/** The object under `error`, or null when the body is not JSON or has no error object. */
export function errorFields(raw: Buffer): Record<string, unknown> | null {
  let parsed: unknown
  try {
    parsed = JSON.parse(raw.toString('utf8'))
  } catch {
    return null
  }
  if (parsed === null || typeof parsed !== 'object') return null
  const error = (parsed as { error?: unknown }).error
  if (error === null || typeof error !== 'object' || Array.isArray(error)) return null
  return error as Record<string, unknown>
}

/**
 * An upstream error in OpenAI's envelope, with the four keys always present (Azure and relays often
 * send only `code` and `message`); extra keys such as `moderation_details` stay. Null when the body
 * is not an error envelope at all.
 */
export function normaliseErrorBody(raw: Buffer, status: number): OpenAIErrorBody | null {
  const fields = errorFields(raw)
  if (fields === null) return null
  const message = asString(fields.message)
  if (message === null) return null
  return {
    error: {
      ...fields,
      message,
      type: asString(fields.type) ?? (status >= 500 ? 'server_error' : 'invalid_request_error'),
      param: asString(fields.param),
      code: asString(fields.code)
    }
  }
}

