import type { Endpoint } from '../openai/models.js'
import type { ProviderConfig } from '../config/schema.js'

/** Where and how to send one image request to a provider; pure, built from config. */
export interface UpstreamTarget {
  /** scheme://host[:port], the undici origin. */
  origin: string
  /** Path and query, never built from client input. */
  path: string
  /** The provider's own credentials and fixed headers. */
  headers: Record<string, string>
}

export interface ProviderAdapter {
  readonly type: string
  target(config: ProviderConfig, endpoint: Endpoint): UpstreamTarget
  /** Strings that must never reach a client or a log line (credentials), for redaction. */
  secrets(config: ProviderConfig): string[]
}
