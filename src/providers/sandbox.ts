import { openaiAdapter } from './openai.js'
import type { ProviderAdapter } from './types.js'

/**
 * The sandbox (src/sandbox/) speaks OpenAI's Images API on a loopback port of its own, started
 * with the registry: requests reach it through the same relay as any upstream, so what a first run
 * or a load test exercises is the real path. Its base URL is filled in once it listens.
 */
export const sandboxAdapter: ProviderAdapter = {
  ...openaiAdapter,
  type: 'sandbox',
  secrets: () => []
}
