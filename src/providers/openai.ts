import { normaliseErrorBody } from '../upstream/error-body.js'
import type { ProviderAdapter } from './types.js'

/** Any OpenAI-compatible upstream: OpenAI itself, relays, local servers. Pass-through. */
export const openaiAdapter: ProviderAdapter = {
  type: 'openai',
  target(config, endpoint) {
    const base = new URL(config.baseUrl ?? '')
    const headers: Record<string, string> = { ...config.headers }
    if (config.apiKey !== undefined) headers.authorization = `Bearer ${config.apiKey}`
    if (config.organization !== undefined) headers['openai-organization'] = config.organization
    if (config.project !== undefined) headers['openai-project'] = config.project
    return { origin: base.origin, path: `${base.pathname.replace(/\/+$/, '')}/images/${endpoint}`, headers }
  },
  secrets(config) {
    // Configured headers may carry credentials too (an api-key for a relay): blank them all out.
    const headerValues = Object.values(config.headers).filter((value) => value.length >= 8)
    // OpenAI's refusals name the organisation and project ("No such organization: org-..."): they
    // identify the gateway's account, not the client's, and are blanked out like the key.
    const account = [config.organization, config.project].filter((value): value is string => value !== undefined && value.length > 0)
    return config.apiKey === undefined ? [...headerValues, ...account] : [config.apiKey, ...headerValues, ...account]
  },
  normaliseError: normaliseErrorBody
}
