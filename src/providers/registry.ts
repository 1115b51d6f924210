import { Agent } from 'undici'
import type { Config, ProviderConfig } from '../config/schema.js'
import { rulesFor, type Endpoint, type ModelRules } from '../openai/models.js'
import { azureAdapter } from './azure.js'
import { openaiAdapter } from './openai.js'
import { sandboxAdapter } from './sandbox.js'
import type { SandboxServer } from '../sandbox/server.js'
import type { ProviderAdapter, UpstreamTarget } from './types.js'

const ADAPTERS: ReadonlyMap<string, ProviderAdapter> = new Map(
  [openaiAdapter, azureAdapter, sandboxAdapter].map((a) => [a.type, a])
)

const ENDPOINTS: readonly Endpoint[] = ['generations', 'edits', 'variations']

export interface Provider {
  readonly id: string
  readonly config: ProviderConfig
  readonly adapter: ProviderAdapter
  /** Keep-alive connection pool to this provider, with its timeouts. */
  readonly dispatcher: Agent
}

export interface Deployment {
  /** `provider/upstreamModel`, as shown in logs, headers and /admin/deployments; health is kept by it. */
  readonly id: string
  readonly provider: Provider
  readonly upstreamModel: string
  readonly weight: number
  /** Lower tiers are tried first. */
  readonly priority: number
  /** The upstream request per endpoint; absent for an endpoint this provider cannot serve. */
  readonly targets: Readonly<Partial<Record<Endpoint, UpstreamTarget>>>
}

export interface RoutedModel {
  readonly name: string
  /** The rules requests are checked against; null for a model the gateway does not know. */
  readonly rules: ModelRules | null
  readonly deployments: readonly Deployment[]
  /** The gateway answers `response_format` itself (docs/images.md). */
  readonly hostImages: boolean
  /** Its upstreams answer base64 only and must not see `response_format`: the gateway takes it off. */
  readonly withholdResponseFormat: boolean
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
  return { id: config.id, config, adapter, dispatcher }
}

function targetsOf(provider: Provider, upstreamModel: string): Partial<Record<Endpoint, UpstreamTarget>> {
  const targets: Partial<Record<Endpoint, UpstreamTarget>> = {}
  for (const endpoint of ENDPOINTS) {
    const target = provider.adapter.target(provider.config, endpoint, upstreamModel)
    if (target !== null) targets[endpoint] = target
  }
  return targets
}

/** Which model names route where, built once from config. */
export class Registry {
  readonly providers: ReadonlyMap<string, Provider>
  readonly models: ReadonlyMap<string, RoutedModel>
  /** Every deployment once, by id (two models may share one). */
  readonly deployments: ReadonlyMap<string, Deployment>
  readonly secrets: readonly string[]
  private readonly sandboxes: readonly SandboxServer[]

  /** Builds the registry, starting a sandbox server for each provider of type `sandbox`. */
  static async create(config: Config): Promise<Registry> {
    const sandboxes: SandboxServer[] = []
    // One at a time, so that a failure leaves no sandbox starting after it was seen.
    try {
      const providers = []
      for (const provider of config.providers) {
        if (provider.type !== sandboxAdapter.type) {
          providers.push(provider)
          continue
        }
        // Loaded only when configured: the sandbox brings sharp (libvips) and a second fastify,
        // about 8 MB of RSS that a gateway in front of real providers does not need.
        const { startSandbox } = await import('../sandbox/server.js')
        const sandbox = await startSandbox()
        sandboxes.push(sandbox)
        providers.push({ ...provider, baseUrl: `${sandbox.origin}/v1` })
      }
      return new Registry({ ...config, providers }, sandboxes)
    } catch (err) {
      await Promise.all(sandboxes.map((s) => s.close()))
      throw err
    }
  }

  private constructor(config: Config, sandboxes: readonly SandboxServer[]) {
    this.sandboxes = sandboxes
    this.providers = new Map(config.providers.map((p) => [p.id, createProvider(p)]))
    const deployments = new Map<string, Deployment>()
    this.models = new Map(
      config.models.map((model) => {
        const routes = model.deployments.map((d): Deployment => {
          const provider = this.providers.get(d.provider)
          if (provider === undefined) throw new Error(`model ${model.name}: unknown provider ${d.provider}`)
          const upstreamModel = d.model ?? model.name
          const id = `${provider.id}/${upstreamModel}`
          const deployment = { id, provider, upstreamModel, weight: d.weight, priority: d.priority, targets: targetsOf(provider, upstreamModel) }
          deployments.set(id, deployment)
          return deployment
        })
        const known = rulesFor(model.rulesOf ?? model.name) ?? rulesFor(routes[0]?.upstreamModel ?? '')
        const withhold = model.hostImages && known !== null && !known.responseFormat
        const rules = withhold ? { ...known, responseFormat: true } : known
        return [model.name, { name: model.name, rules, deployments: routes, hostImages: model.hostImages, withholdResponseFormat: withhold }]
      })
    )
    this.deployments = deployments
    this.secrets = [...this.providers.values()].flatMap((p) => p.adapter.secrets(p.config))
  }

  async close(): Promise<void> {
    await Promise.all([...this.providers.values()].map((p) => p.dispatcher.close()))
    await Promise.all(this.sandboxes.map((s) => s.close()))
  }
}
