import type { Endpoint } from '../openai/models.js'
import type { ProviderConfig } from '../config/schema.js'
import type { OpenAIErrorBody } from '../errors/catalogue.js'

/** Where and how to send one image request to a deployment; pure, built from config. */
export interface UpstreamTarget {
  /** scheme://host[:port], the undici origin. */
  origin: string
  /** Path and query, never built from client input. */
  path: string
  /** The provider's own credentials and fixed headers. */
  headers: Record<string, string>
}

/** How one kind of upstream is spoken to: data plus pure functions, one file per provider type. */
export interface ProviderAdapter {
  readonly type: string
  /**
   * The request for one endpoint of one deployment (`upstreamModel` is the name the upstream knows
   * the model by: a model for OpenAI, a deployment for Azure); null when the provider cannot serve
   * the endpoint at all.
   */
  target(config: ProviderConfig, endpoint: Endpoint, upstreamModel: string): UpstreamTarget | null
  /** Strings that must never reach a client or a log line (credentials), for redaction. */
  secrets(config: ProviderConfig): string[]
  /**
   * The upstream's error answer in OpenAI's four-key envelope; null when the body is no error
   * envelope at all (the relay then answers with a generic upstream error).
   */
  normaliseError(raw: Buffer, status: number): OpenAIErrorBody | null
}
