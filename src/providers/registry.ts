import { Agent } from 'undici'
import type { Config, ProviderConfig } from '../config/schema.js'
import { rulesFor, type Endpoint, type ModelRules } from '../openai/models.js'
import { openaiAdapter } from './openai.js'
import type { ProviderAdapter, UpstreamTarget } from './types.js'

const ADAPTERS: ReadonlyMap<string, ProviderAdapter> = new Map([[openaiAdapter.type, openaiAdapter]])

export interface Provider {
  readonly id: string
  readonly config: ProviderConfig
  readonly adapter: ProviderAdapter
  /** Keep-alive connection pool to this provider, with its timeouts. */
  readonly dispatcher: Agent
  readonly targets: Readonly<Record<Endpoint, UpstreamTarget>>
}

export interface Deployment {
  /** `provider/upstreamModel`, as shown in logs and headers. */
  readonly id: string
  readonly provider: Provider
  readonly upstreamModel: string
}

export interface RoutedModel {
  readonly name: string
  /** The rules requests are checked against; null for a model the gateway does not know. */
  readonly rules: ModelRules | null
  readonly deployments: readonly Deployment[]
}

function createProvider(config: ProviderConfig): Provider {
  const adapter = ADAPTERS.get(config.type)
  // The config schema already refused unknown types; this guards the two lists drifting apart.
  if (adapter === undefined) throw new Error(`no adapter for provider type "${config.type}"`)
  const dispatcher = new Agent({
    connect: { timeout: config.timeouts.connectMs },
    headersTimeout: config.timeouts.headersMs,
    bodyTimeout: config.timeouts.bodyIdleMs,
    connections: config.maxConnections,
    // Image answers can be tens of MB of base64; undici's own cap stays off and the body streams.
    maxResponseSize: -1
  })
  const targets = {
    generations: adapter.target(config, 'generations'),
    edits: adapter.target(config, 'edits'),
    variations: adapter.target(config, 'variations')
  }
  return { id: config.id, config, adapter, dispatcher, targets }
}

/** Which model names route where, built once from config. */
export class Registry {
  readonly providers: ReadonlyMap<string, Provider>
  readonly models: ReadonlyMap<string, RoutedModel>
  readonly secrets: readonly string[]

  constructor(config: Config) {
    this.providers = new Map(config.providers.map((p) => [p.id, createProvider(p)]))
    this.models = new Map(
      config.models.map((model) => {
        const deployments = model.deployments.map((d) => {
          const provider = this.providers.get(d.provider)
          if (provider === undefined) throw new Error(`model ${model.name}: unknown provider ${d.provider}`)
          const upstreamModel = d.model ?? model.name
          return { id: `${provider.id}/${upstreamModel}`, provider, upstreamModel }
        })
        const rules = rulesFor(model.rulesOf ?? model.name) ?? rulesFor(deployments[0]?.upstreamModel ?? '')
        return [model.name, { name: model.name, rules, deployments }]
      })
    )
    this.secrets = [...this.providers.values()].flatMap((p) => p.adapter.secrets(p.config))
  }

  async close(): Promise<void> {
    await Promise.all([...this.providers.values()].map((p) => p.dispatcher.close()))
  }
}
