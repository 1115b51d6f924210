import type { OpenAIErrorBody, OpenAIErrorType } from '../errors/catalogue.js'
import { asString, errorFields, normaliseErrorBody } from '../upstream/error-body.js'
import type { ProviderAdapter } from './types.js'

/**
 * The `api-version` sent when the provider's config names none. Azure's image how-to
 * (learn.microsoft.com/azure/ai-services/openai/how-to/dall-e) gives 2025-04-01-preview for
 * gpt-image-1 generations and edits, and the REST spec of that version serves dall-e-3 on the same
 * generations route. The GA versions (2024-10-21 and older) have no `/images/edits` route at all: a
 * GA default would answer every edit with 404 "Resource not found" (openai-python #2608).
 */
export const AZURE_DEFAULT_API_VERSION = '2025-04-01-preview'

/** Azure's names for a safety refusal: chat-style `content_filter`, the image doc's `contentFilter`, DALL·E 3's OpenAI name. */
const CONTENT_FILTER_CODES: ReadonlySet<string> = new Set(['content_filter', 'contentFilter', 'content_policy_violation'])
/** The inner code Azure puts on every content-filter refusal, under `innererror` or (REST spec) `inner_error`. */
const RAI_POLICY_VIOLATION = 'ResponsibleAIPolicyViolation'
const SAFETY_MESSAGE = "Your request was rejected by the upstream provider's safety system."

/**
 * Azure's numeric-string codes that have an OpenAI equivalent. The others (a "404" that means any
 * unknown route, an api-version without it included; "500") say no more than the HTTP status, and
 * OpenAI's own answers for those carry a null code.
 */
const NUMERIC_CODE_EQUIVALENTS: Readonly<Record<string, { type: OpenAIErrorType; code: string }>> = {
  '429': { type: 'requests', code: 'rate_limit_exceeded' }
}

function isContentFilter(fields: Record<string, unknown>): boolean {
  const code = asString(fields.code)
  if (code !== null && CONTENT_FILTER_CODES.has(code)) return true
  return [fields.innererror, fields.inner_error].some(
    (inner) => inner !== null && typeof inner === 'object' && (inner as { code?: unknown }).code === RAI_POLICY_VIOLATION
  )
}

/**
 * Azure repeats the HTTP status inside some errors (`"status": 400`). OpenAI's envelope has no such
 * key, and the copy would contradict the answer's status if the gateway ever relayed it under another.
 */
function withoutStatus(error: Record<string, unknown> & OpenAIErrorBody['error']): OpenAIErrorBody {
  const { status: _repeated, ...rest } = error
  return { error: rest }
}

/** Azure OpenAI, classic deployment-scoped API: deployment in the path, `api-version` query, `api-key` header. */
export const azureAdapter: ProviderAdapter = {
  type: 'azure',
  target(config, endpoint, upstreamModel) {
    // Azure serves generations and edits per deployment, never variations: no route to relay to.
    if (endpoint === 'variations') return null
    const base = new URL(config.baseUrl ?? '')
    // Operators paste the portal's endpoint, the SDKs' `${endpoint}/openai` base, or either behind a proxy prefix.
    const prefix = base.pathname.replace(/\/+$/, '').replace(/\/openai$/, '')
    const query = new URLSearchParams({ 'api-version': config.apiVersion ?? AZURE_DEFAULT_API_VERSION })
    const headers: Record<string, string> = {}
    for (const [name, value] of Object.entries(config.headers)) {
      // The configured key wins over a hand-written api-key header, whatever its case: one key, sent once.
      if (config.apiKey === undefined || name.toLowerCase() !== 'api-key') headers[name] = value
    }
    // Azure reads `Authorization: Bearer` as an Entra ID token, so a resource key goes in `api-key`.
    if (config.apiKey !== undefined) headers['api-key'] = config.apiKey
    return {
      origin: base.origin,
      path: `${prefix}/openai/deployments/${encodeURIComponent(upstreamModel)}/images/${endpoint}?${query.toString()}`,
      headers
    }
  },
  secrets(config) {
    // Configured headers may carry credentials too (a proxy's key): blank them all out, as for openai.
    const headerValues = Object.values(config.headers).filter((value) => value.length >= 8)
    return config.apiKey === undefined ? headerValues : [config.apiKey, ...headerValues]
  },
  normaliseError(raw, status) {
    const fields = errorFields(raw)
    if (fields === null) return null
    if (isContentFilter(fields)) {
      // OpenAI's name and type for a safety refusal, so clients handle it as they do OpenAI's; Azure's
      // innererror (which filter, what severity) stays as extra keys. param stays null unless Azure
      // names one: the refused input may be an edit's image, or the output image itself.
      return withoutStatus({
        ...fields,
        message: asString(fields.message) ?? SAFETY_MESSAGE,
        type: 'invalid_request_error',
        param: asString(fields.param),
        code: 'content_policy_violation'
      })
    }
    const body = normaliseErrorBody(raw, status)
    if (body === null) return null
    const code = body.error.code
    if (code === null || !/^[0-9]{3}$/.test(code)) return withoutStatus(body.error)
    const equivalent = NUMERIC_CODE_EQUIVALENTS[code]
    return withoutStatus({
      ...body.error,
      type: asString(fields.type) ?? equivalent?.type ?? body.error.type,
      code: equivalent?.code ?? null
    })
  }
}
