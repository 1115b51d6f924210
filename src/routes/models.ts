import type { FastifyInstance } from 'fastify'
import { allowsModel } from '../http/auth.js'
import { releasedAt } from '../openai/models.js'
import type { Registry, RoutedModel } from '../providers/registry.js'
import { findModel, modelNotFound } from '../relay/dispatch.js'

interface ModelObject {
  id: string
  object: 'model'
  created: number
  owned_by: string
}

function describe(model: RoutedModel): ModelObject {
  const known = releasedAt(model.name)
  return { id: model.name, object: 'model', created: known ?? 0, owned_by: known === null ? 'image-gateway' : 'openai' }
}

/** GET /v1/models and /v1/models/{model}, in OpenAI's list shape, from config. */
export default async function modelRoutes(app: FastifyInstance, options: { registry: Registry }): Promise<void> {
  const { registry } = options
  const all = [...registry.models.values()].map(describe)
  const auth = { auth: true }

  // Only the models the caller's key may use, as OpenAI lists only what an account can reach.
  app.get('/v1/models', { config: auth }, async (request) => ({
    object: 'list',
    data: all.filter((model) => request.apiKey === null || allowsModel(request.apiKey, model.id))
  }))

  app.get<{ Params: { model: string } }>('/v1/models/:model', { config: auth }, async (request) => {
    const name = request.params.model
    // As at OpenAI, a model the caller cannot use does not exist for it.
    if (request.apiKey !== null && !allowsModel(request.apiKey, name)) throw modelNotFound(name)
    return describe(findModel(registry, name))
  })
}
