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
    return config.apiKey === undefined ? headerValues : [config.apiKey, ...headerValues]
  },
  normaliseError: normaliseErrorBody
}
